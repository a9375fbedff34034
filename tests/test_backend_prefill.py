"""Through a chat server the first generated token is the answer's only when the labeler's
template writes nothing before an answer: a template with a prefill (text in every assistant
turn that the generation prompt lacks, e.g. an empty thinking block) is refused before any
request; a ChatML labeler (qwen2_vl's published template) is not."""

from __future__ import annotations

import pytest
from PIL import Image

from rlaifv.backends.base import CapabilityError, EndpointOptions
from rlaifv.backends.openai_server import OpenAIBackend
from rlaifv.compat.tokenizers import bytelevel_bpe
from rlaifv.compat.zoo import load_template
from rlaifv.models.template import answer_format

SPECIALS = ["<image>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"]
# constructed: ChatML whose assistant turns carry an empty thinking block that the generation prompt does not
THINK = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}<think>\n\n</think>\n\n{% endif %}"
         "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
         "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


class TemplateOnly:
    """What ``models/template.py`` uses of a processor: its tokenizer and template."""

    def __init__(self, tokenizer, template: str) -> None:
        self.tokenizer, self.chat_template = tokenizer, template

    def apply_chat_template(self, messages, **kw):
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, **kw)


@pytest.fixture(scope="module")
def tok():
    return bytelevel_bpe(SPECIALS, bos=None, eos="<|endoftext|>", pad="<|endoftext|>")


def test_prefill_template_is_refused_before_any_request(tok):
    proc = TemplateOnly(tok, THINK)
    assert answer_format(proc).prefill  # the template really has one
    # an address nothing listens on: the refusal must come before any request is sent
    be = OpenAIBackend(EndpointOptions(base_url="http://127.0.0.1:9/v1", model="m", max_retries=0, timeout=1.0),
                       stage="conquer", processor=proc)
    with pytest.raises(CapabilityError, match="puts .*think.* before every answer"):
        be.yes_no(Image.new("RGB", (8, 8)), ["Is there a red circle?"])
    assert sum(be.http.counts.values()) == 0


def test_chatml_labeler_passes_the_check(tok):
    proc = TemplateOnly(tok, load_template("qwen2_vl"))
    assert answer_format(proc).prefill == ""
    be = OpenAIBackend(EndpointOptions(base_url="http://127.0.0.1:9/v1", model="m"), stage="conquer", processor=proc)
    be._check_prefill()  # no error; the request itself would go to the server
    assert be.notes == []


def test_without_a_local_processor_the_check_is_noted_not_assumed():
    be = OpenAIBackend(EndpointOptions(base_url="http://127.0.0.1:9/v1", model="served-name"), stage="conquer")
    be._check_prefill()
    assert any("prefill not checked" in n for n in be.notes)

"""The answer boundary read from each model's own chat template (``models/template.py``).

Real published templates (``rlaifv/compat/templates``) with tokenizers of the real kinds
(SentencePiece-style "▁" and byte-level "Ġ" BPE): where the first answer token sits, which
yes/no ids conquer reads there, which token ends an answer, and the LLaVA-1.5 regression the
issue found (a ChatML guess read "Yes" where the model writes "▁Yes").
"""

from __future__ import annotations

import pytest
import torch

from rlaifv.compat.tokenizers import bytelevel_bpe, sentencepiece_bpe
from rlaifv.compat.zoo import load_template
from rlaifv.models.chat import IGNORE_INDEX, answer_ids, collate, encode_prompt, prompt_text
from rlaifv.models.template import (PROBE_QUESTION, TemplateError, compute_answer_format, override_yes_no_ids,
                                    template_yes_no_ids)
from rlaifv.models.tiny import TinyVLMConfig, build_tiny_vlm
from rlaifv.records import PolarQuestion
from rlaifv.sandbox.render import render
from rlaifv.sandbox.world import World
from rlaifv.stages.conquer import ConquerConfig, conquer

SP_SPECIALS = ["<image>", "[INST]", "[/INST]", "<start_of_turn>", "<end_of_turn>", "<end_of_utterance>", "<|im_start|>", "<|im_end|>"]
BL_SPECIALS = SP_SPECIALS + ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|image|>",
                             "<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<start_of_image>"]


@pytest.fixture(scope="module")
def sp():
    return sentencepiece_bpe(SP_SPECIALS)


@pytest.fixture(scope="module")
def bl():
    return bytelevel_bpe(BL_SPECIALS, bos=None, eos="<|endoftext|>", pad="<|endoftext|>")


class TemplateOnly:
    """The two things ``models/template.py`` uses of a VLM processor: its tokenizer and template."""

    def __init__(self, tokenizer, template: str) -> None:
        self.tokenizer, self.chat_template = tokenizer, template

    def apply_chat_template(self, messages, **kw):
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, **kw)


# (template, tokenizer kind, prefill, lead, end token). Hand-read from the templates' text
# (PROVENANCE.md): LLaVA-1.5 renders "ASSISTANT: {text} " and has no end marker (EOS "</s>" ends
# the answer), Mistral "[/INST] {text}</s>", ChatML "assistant\n{text}<|im_end|>", ...
CASES = [
    ("llava_1_5", "sp", "", " ", "</s>"),
    ("llava_next_vicuna", "sp", "", " ", "</s>"),
    ("llava_next_mistral", "sp", "", " ", "</s>"),
    ("llava_next_34b", "sp", "", "", "<|im_end|>"),
    ("llava_onevision", "bl", "", "", "<|im_end|>"),
    ("qwen2_vl", "bl", "", "", "<|im_end|>"),
    ("idefics2", "sp", "", " ", "<end_of_utterance>"),
    ("idefics3", "bl", "", " ", "<end_of_utterance>"),
    ("smolvlm", "bl", "", " ", "<end_of_utterance>"),
    ("gemma3", "sp", "", "", "<end_of_turn>"),
    ("mllama", "bl", "", "", "<|eot_id|>"),
]


@pytest.mark.parametrize("name,kind,prefill,lead,end", CASES, ids=[c[0] for c in CASES])
def test_answer_format_of_real_templates(name, kind, prefill, lead, end, sp, bl) -> None:
    tok = sp if kind == "sp" else bl
    fmt = compute_answer_format(TemplateOnly(tok, load_template(name)))
    assert (fmt.prefill, fmt.lead, tok.convert_ids_to_tokens(fmt.end_id)) == (prefill, lead, end)
    assert fmt.stop_ids[0] == fmt.end_id and tok.eos_token_id in fmt.stop_ids
    # The first answer token, found independently: tokenise the rendered prompt followed by the
    # answer as the template writes it, and take the first token after the prompt's own tokens.
    prompt = fmt.context_text
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    full = tok(prompt + lead + "Yes", add_special_tokens=False)["input_ids"]
    assert full[: len(p_ids)] == p_ids and len(full) == len(p_ids) + 1
    ids = template_yes_no_ids(TemplateOnly(tok, load_template(name)))
    assert ids.yes[1] == full[len(p_ids)]  # own spacing first: lead + "yes", then lead + "Yes"
    expected = ("▁Yes" if kind == "sp" else "ĠYes") if lead == " " else "Yes"
    assert expected in tok.convert_ids_to_tokens(list(ids.yes))
    assert not set(ids.yes) & set(ids.no)


def test_llava_1_5_reads_the_space_led_token_not_the_chatml_guess(sp) -> None:
    # The regression: after "ASSISTANT:" the model writes "▁Yes"; the old fixed ChatML prefix
    # read "Yes" (no "▁"), a different token id.
    proc = TemplateOnly(sp, load_template("llava_1_5"))
    ids = template_yes_no_ids(proc)
    toks = sp.convert_ids_to_tokens(list(ids.yes) + list(ids.no))
    assert toks[:2] == ["▁yes", "▁Yes"] and set(toks) >= {"▁yes", "▁Yes", "▁no", "▁No"}
    chatml = sp("<|im_start|>assistant\nYes", add_special_tokens=False)["input_ids"][-1]
    assert sp.convert_ids_to_tokens(chatml) == "Yes" and chatml != ids.yes[1]


def test_answers_are_tokenised_in_context(sp) -> None:
    # SentencePiece adds "▁" at the start of a text: standalone "Yes" is "▁Yes", but after the
    # ChatML header the model writes "Yes". Labels must hold the in-context tokens.
    chatml = compute_answer_format(TemplateOnly(sp, load_template("llava_next_34b")))
    assert sp.convert_ids_to_tokens(sp("Yes", add_special_tokens=False)["input_ids"]) == ["▁Yes"]
    assert sp.convert_ids_to_tokens(chatml.answer_ids(sp, "Yes")) == ["Yes", "<|im_end|>"]
    llava = compute_answer_format(TemplateOnly(sp, load_template("llava_1_5")))
    assert sp.convert_ids_to_tokens(llava.answer_ids(sp, "Yes")) == ["▁Yes", "</s>"]


def test_no_template_is_a_prefix_prompt() -> None:
    # PaliGemma-style: no chat template; the prompt is the question, EOS ends the answer.
    sp = sentencepiece_bpe(SP_SPECIALS)
    assert sp.chat_template is None
    fmt = compute_answer_format(sp)
    assert not fmt.has_template and fmt.lead == "" and fmt.end_id == sp.eos_token_id
    assert fmt.context_text == PROBE_QUESTION + "\n"


def test_override_yes_no_tokens(sp) -> None:
    proc = TemplateOnly(sp, load_template("llava_1_5"))
    ids = override_yes_no_ids(proc, ["▁Yes", sp.convert_tokens_to_ids("▁yes")], ["▁No"])
    assert sp.convert_ids_to_tokens(list(ids.yes)) == ["▁Yes", "▁yes"] and sp.convert_ids_to_tokens(list(ids.no)) == ["▁No"]
    with pytest.raises(TemplateError, match="not a token"):
        override_yes_no_ids(proc, ["▁Definitely-not-a-token"], ["▁No"])
    with pytest.raises(TemplateError, match="share"):
        override_yes_no_ids(proc, ["▁Yes"], ["▁Yes"])
    with pytest.raises(ValueError, match="both yes_tokens and no_tokens"):
        ConquerConfig(yes_tokens=["▁Yes"])


# --------------------------------------------------------------------------- a tiny LLaVA with the LLaVA-1.5 template


@pytest.fixture(scope="module")
def llava15(sp):
    """A tiny LLaVA whose processor carries the real LLaVA-1.5 template and a SentencePiece tokenizer."""
    cfg = TinyVLMConfig(arch="llava", image_size=32, patch_size=16, vision_hidden=32, vision_layers=1, vision_heads=2,
                        text_hidden=32, text_layers=1, text_heads=2, text_kv_heads=2, intermediate=64)
    tok = sentencepiece_bpe(SP_SPECIALS)
    model, processor = build_tiny_vlm(cfg, tok, seed=0)
    processor.chat_template = load_template("llava_1_5")
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)  # sharpen: a row or token mix-up must show
    return model.eval(), processor


def test_llava_1_5_prompt_and_labels(llava15) -> None:
    _, processor = llava15
    tok = processor.tokenizer
    assert prompt_text(processor, "Is there a cat?") == "USER: <image>\nIs there a cat? ASSISTANT:"
    image = render(World().scene(0, "test"), 32)
    batch = collate(processor, [image], ["Is there a cat?"], ["Yes, a cat."])
    sup = batch["input_ids"][0][batch["labels"][0] != IGNORE_INDEX].tolist()
    # exactly the answer as the template places it (leading "▁") and the end token "</s>"
    assert tok.convert_ids_to_tokens(sup)[0].startswith("▁Yes") and sup[-1] == tok.eos_token_id
    assert sup == answer_ids(processor, "Yes, a cat.")
    assert tok.decode(sup, skip_special_tokens=True).strip() == "Yes, a cat."


def test_llava_1_5_conquer_equals_naive_forward_on_the_templates_tokens(llava15) -> None:
    model, processor = llava15
    tok = processor.tokenizer
    images = [render(World().scene(i, "test"), 32) for i in range(2)]
    qs = [["Is there a red circle? Please answer yes or no.", "Is there a star?"], ["Is there a blue square? Please answer yes or no."]]
    groups = [(im, [PolarQuestion(f"p{i}#0/{j}", "c", q) for j, q in enumerate(row)]) for i, (im, row) in enumerate(zip(images, qs))]
    shared = conquer(model, processor, groups, ConquerConfig(model="x"))
    naive = conquer(model, processor, groups, ConquerConfig(model="x", share_prefix=False))
    flat = [(im, q) for im, row in zip(images, qs) for q in row]
    for (im, q), a, b in zip(flat, shared, naive):
        enc = encode_prompt(processor, im, q)
        with torch.no_grad():
            probs = torch.softmax(model(**enc).logits[0, -1].float(), -1)
        # the ids: what the template itself puts first, found by tokenising prompt + " Yes"
        text = prompt_text(processor, q)
        n = len(tok(text, add_special_tokens=False)["input_ids"])
        yes = [tok(text + sp_, add_special_tokens=False)["input_ids"][n] for sp_ in (" yes", " Yes", "yes", "Yes")]
        no = [tok(text + sp_, add_special_tokens=False)["input_ids"][n] for sp_ in (" no", " No", "no", "No")]
        single = lambda w: len(tok(text + w, add_special_tokens=False)["input_ids"]) == n + 1  # noqa: E731
        yes = [i for i, w in zip(yes, (" yes", " Yes", "yes", "Yes")) if w.startswith(" ") or single(w)]
        no = [i for i, w in zip(no, (" no", " No", "no", "No")) if w.startswith(" ") or single(w)]
        p_yes, p_no = probs[sorted(set(yes))].sum().item(), probs[sorted(set(no))].sum().item()
        for s in (a, b):
            assert s.p_yes == pytest.approx(p_yes, rel=1e-4) and s.p_no == pytest.approx(p_no, rel=1e-4)

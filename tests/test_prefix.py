"""Tests for shared-prefix scoring (models/prefix.py) against naive full forwards.

The shared-prefix path must give the same numbers as one full forward per prompt: a wrong
position offset, a padding mask slip, a mis-gathered last token or a prefix cache that grows
across batches each shifts the probabilities well beyond the 1e-4 tolerance, because the
output layer is sharpened (x30) so that p_yes/p_no differ visibly between questions.
"""

from __future__ import annotations


import pytest

from rlaifv.sandbox.pretrain import tokenizer_corpus
import torch

from rlaifv.models.chat import answer_ids, collate, encode_prompt
from rlaifv.models.generate import score_yes_no
from rlaifv.models import prefix as prefix_mod
from rlaifv.models.packed import block_mask, check_packable, pack_chunks
from rlaifv.models.prefix import (
    encode_prefix,
    score_suffix_tokens,
    score_suffixes_last_logits,
    score_yes_no_shared,
    split_prefix,
)
from rlaifv.models.tiny import TinyVLMConfig, build_tiny_vlm, train_tokenizer
from rlaifv.sandbox.render import render
from rlaifv.sandbox.world import World, WorldConfig

torch.set_num_threads(1)  # a training job shares the CPU

# Different lengths; two share a long text prefix beyond the image ("Is there a ...").
QUESTIONS = [
    "Is there a star in the image? Please answer yes or no.",
    "Is there a large red circle at the top left? Please answer yes or no.",
    "How many objects are there?",
    "Is there a small blue square in the center? Please answer yes or no.",
]
ANSWERS = ["Yes.", "There are three objects.", "No. There is nothing at the top left."]


def _corpus(n_scenes: int = 30) -> list[str]:
    """Every sandbox task's text, as the pre-training tokenizer sees it."""
    return tokenizer_corpus(World(WorldConfig()), n_scenes)


@pytest.fixture(scope="module", params=["idefics3", "llava"])
def vlm(request):
    """(model, processor) of a tiny randomly initialised VLM with a sharpened output layer."""
    cfg = TinyVLMConfig(
        arch=request.param, image_size=32, patch_size=8, vision_hidden=32, vision_layers=1, vision_heads=2,
        text_hidden=32, text_layers=2, text_heads=2, text_kv_heads=2, intermediate=64, vocab_size=600,
    )
    tok = train_tokenizer(_corpus(), request.param, vocab_size=cfg.vocab_size)
    model, processor = build_tiny_vlm(cfg, tok, seed=0)
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    return model.eval(), processor


@pytest.fixture(scope="module")
def images():
    return [render(World().scene(i, "test"), 32) for i in range(3)]


def _naive_answer_logprobs(model, processor, image, question: str, answer: str) -> torch.Tensor:
    """Log-probs of answer + EOS tokens from one full forward of prompt + answer."""
    batch = collate(processor, [image], [question], [answer])
    labels = batch.pop("labels")[0]
    with torch.no_grad():
        logp = torch.log_softmax(model(**batch).logits[0].float(), dim=-1)
    pos = (labels != -100).nonzero().flatten()
    return logp[pos - 1, labels[pos]]


def test_split_prefix_reassembles_prompts(vlm, images) -> None:
    _, processor = vlm
    prefix, suffixes = split_prefix(processor, images[0], QUESTIONS)
    p = prefix["input_ids"][0].tolist()
    for q, s in zip(QUESTIONS, suffixes):
        assert p + s == encode_prompt(processor, images[0], q)["input_ids"][0].tolist()
        assert len(s) >= 1
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert image_id in p and all(image_id not in s for s in suffixes)
    assert prefix["attention_mask"].shape == prefix["input_ids"].shape
    assert "pixel_values" in prefix
    # One question: the prefix stops one token short so the suffix is non-empty.
    _, single = split_prefix(processor, images[0], QUESTIONS[:1])
    assert len(single[0]) == 1


def test_split_prefix_rejects_image_in_suffix(vlm, images) -> None:
    # A processor whose prompts differ before the image ends cannot share the image. Simulate
    # it by declaring a token that lies in a suffix to be an image token.
    _, processor = vlm
    _, suffixes = split_prefix(processor, images[0], QUESTIONS)
    processor.zz_image_token_id = suffixes[0][0]
    try:
        with pytest.raises(ValueError, match="does not contain all image tokens"):
            split_prefix(processor, images[0], QUESTIONS)
    finally:
        del processor.zz_image_token_id


@pytest.mark.parametrize("mode,batch_size,pack_tokens", [("batched", 1, 0), ("batched", 3, 0), ("packed", 1, 2048), ("packed", 1, 12)])
def test_yes_no_shared_matches_naive(vlm, images, mode: str, batch_size: int, pack_tokens: int) -> None:
    # packed with 12 tokens per forward: several chunks per image (and single long suffixes alone)
    model, processor = vlm
    per_image = [QUESTIONS, QUESTIONS[1:3], QUESTIONS[::-1]]
    shared = score_yes_no_shared(model, processor, images, per_image, batch_size=batch_size, mode=mode, pack_tokens=pack_tokens or 2048)
    flat_imgs = [img for img, qs in zip(images, per_image) for _ in qs]
    flat_qs = [q for qs in per_image for q in qs]
    p_yes, p_no = score_yes_no(model, processor, flat_imgs, flat_qs, batch_size=1)
    got = [pair for pairs in shared for pair in pairs]
    assert len(got) == len(flat_qs)
    assert max(abs(a[0] - b) for a, b in zip(got, p_yes)) < 1e-4
    assert max(abs(a[1] - b) for a, b in zip(got, p_no)) < 1e-4
    # A random model's p_yes/p_no are tiny (~1e-4), so the absolute check alone would be
    # nearly vacuous: also compare in log space, where the questions differ by far more.
    log_got = torch.tensor(got).log()
    log_naive = torch.tensor([p_yes, p_no]).T.log()
    assert (log_got - log_naive).abs().max().item() < 1e-3
    assert (log_naive.max(0).values - log_naive.min(0).values).min().item() > 0.1


def test_last_logits_match_naive_forward(vlm, images) -> None:
    model, processor = vlm
    prefix, suffixes = split_prefix(processor, images[1], QUESTIONS)
    got = score_suffixes_last_logits(model, prefix, suffixes, batch_size=3)
    with torch.no_grad():
        naive = torch.stack([model(**encode_prompt(processor, images[1], q)).logits[0, -1].float() for q in QUESTIONS])
    assert got.shape == naive.shape
    assert (got - naive).abs().max().item() < 1e-4
    assert (naive[0] - naive[1]).abs().max().item() > 0.1  # questions give visibly different logits


def test_suffix_tokens_match_naive_answer_logprobs(vlm, images) -> None:
    model, processor = vlm
    q = QUESTIONS[1]
    # N candidate answers after one full prompt (best-of-N / DPO reference log-probs).
    prefix = encode_prompt(processor, images[1], q)
    suffixes = [answer_ids(processor, a) for a in ANSWERS]
    got = score_suffix_tokens(model, prefix, suffixes, batch_size=2)
    for a, s, lp in zip(ANSWERS, suffixes, got):
        naive = _naive_answer_logprobs(model, processor, images[1], q, a)
        assert lp.shape == (len(s),)
        assert torch.allclose(lp, naive, atol=1e-4)
        assert abs(lp.sum().item() - naive.sum().item()) < 1e-4


def test_suffix_tokens_question_plus_answer_after_shared_image(vlm, images) -> None:
    # Prefix shared by different questions; suffix = question tail + answer; the answer part
    # (last len(answer) tokens) must equal the naive answer log-probs.
    model, processor = vlm
    qs = QUESTIONS[:3]
    prefix, q_suffixes = split_prefix(processor, images[2], qs)
    a_ids = [answer_ids(processor, a) for a in ANSWERS]
    got = score_suffix_tokens(model, prefix, [s + a for s, a in zip(q_suffixes, a_ids)], batch_size=3)
    for q, a, ids, lp in zip(qs, ANSWERS, a_ids, got):
        naive = _naive_answer_logprobs(model, processor, images[2], q, a)
        assert abs(lp[-len(ids) :].sum().item() - naive.sum().item()) < 1e-4


def test_prefix_cache_not_mutated_across_batches_and_calls(vlm, images) -> None:
    model, processor = vlm
    prefix, suffixes = split_prefix(processor, images[0], QUESTIONS)
    enc = encode_prefix(model, prefix)
    snapshot = [(layer.keys.clone(), layer.values.clone()) for layer in enc.cache.layers]
    first = score_suffixes_last_logits(model, enc, suffixes, batch_size=1)
    second = score_suffixes_last_logits(model, enc, suffixes, batch_size=3)
    assert torch.allclose(first, second, atol=1e-5)
    assert enc.cache.get_seq_length() == enc.length == prefix["input_ids"].shape[1]
    for layer, (k, v) in zip(enc.cache.layers, snapshot):
        assert layer.keys.shape[0] == 1 and torch.equal(layer.keys, k) and torch.equal(layer.values, v)
    # An empty suffix reads the prefix's own last position.
    out = score_suffixes_last_logits(model, enc, [[], suffixes[0]])
    assert torch.equal(out[0], enc.last_logits) and torch.allclose(out[1], first[0], atol=1e-5)


def test_mrope_models_refused(vlm) -> None:
    model, _ = vlm

    class Fake(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = torch.nn.Module()
            self.model.get_rope_index = lambda *a: None
            self.config = model.config
            self.w = torch.nn.Parameter(torch.zeros(1))

    with pytest.raises(NotImplementedError, match="multimodal"):
        encode_prefix(Fake(), {"input_ids": torch.zeros(1, 3, dtype=torch.long)})


# --------------------------------------------------------------------------- packed suffixes (models/packed.py)


def test_block_mask_by_hand() -> None:
    # prefix of 2 tokens, suffixes of 2 and 1 tokens: each suffix token sees the prefix and its own earlier tokens
    m = block_mask(2, [2, 1], torch.float32)
    assert m.shape == (1, 1, 3, 5)
    allowed = (m[0, 0] == 0).int().tolist()
    assert allowed == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 0, 0, 1]]
    assert m[0, 0, 2, 2].item() == torch.finfo(torch.float32).min


def test_pack_chunks_by_hand() -> None:
    assert pack_chunks([3, 0, 4, 5, 9, 1], 8) == [[0, 2], [3], [4], [5]]  # empty skipped; 9 > 8 stands alone
    assert pack_chunks([1, 1, 1], 2048) == [[0, 1, 2]]
    with pytest.raises(ValueError):
        pack_chunks([1], 0)


def test_packed_equals_batched_logits_for_every_token(vlm, images) -> None:
    model, processor = vlm
    prefix, suffixes = split_prefix(processor, images[1], QUESTIONS)
    enc = encode_prefix(model, prefix)
    packed = score_suffix_tokens(model, enc, suffixes, mode="packed")
    batched = score_suffix_tokens(model, enc, suffixes, batch_size=2, mode="batched")
    for a, b in zip(packed, batched):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-4)
    assert prefix_mod.pack_refusal(model) is None


class _MaskDropper(torch.nn.Module):
    """A model that silently ignores a custom 4-D attention mask (what packing must detect)."""

    def __init__(self, inner) -> None:
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, **kw):
        if kw.get("attention_mask") is not None and kw["attention_mask"].ndim == 4:
            kw["attention_mask"] = None
        return self.inner(**kw)


def test_model_ignoring_the_block_mask_falls_back_to_batched(vlm, images) -> None:
    model, processor = vlm
    dropper = _MaskDropper(model).eval()
    naive_y, naive_n = score_yes_no(model, processor, [images[0]] * len(QUESTIONS), QUESTIONS, batch_size=1)
    with pytest.warns(UserWarning, match="packed scoring unavailable for _MaskDropper .*does not honour a custom 4-D"):
        got = score_yes_no_shared(dropper, processor, [images[0]], [QUESTIONS])[0]
    assert max(abs(a[0] - y) + abs(a[1] - n) for a, y, n in zip(got, naive_y, naive_n)) < 1e-4
    assert "does not honour" in prefix_mod.pack_refusal(dropper)


def test_attention_without_custom_masks_is_refused() -> None:
    class Cfg:
        _attn_implementation = "flash_attention_2"

        def get_text_config(self, decoder=True):
            return self

    class Fake:
        config = Cfg()

    with pytest.raises(NotImplementedError, match="flash_attention_2"):
        check_packable(Fake())
    with pytest.raises(ValueError, match="packed, batched, naive"):
        prefix_mod.check_prefix_mode("fast")


def test_split_prefix_checks_its_spliced_token_ids(vlm, images, monkeypatch) -> None:
    # split_prefix processes the image for the first and last prompts only and splices the
    # others from text-only tokenisation; a wrong splice is caught by the last prompt's full
    # encoding, and every prompt is then encoded in full.
    _, processor = vlm
    want = [encode_prompt(processor, images[0], q)["input_ids"][0].tolist() for q in QUESTIONS]
    calls = []
    real = prefix_mod._spliced_rows
    monkeypatch.setattr(prefix_mod, "_spliced_rows", lambda *a: calls.append(1) or [r + [0] for r in real(*a)])
    prefix, suffixes = split_prefix(processor, images[0], QUESTIONS)
    assert calls and [prefix["input_ids"][0].tolist() + s for s in suffixes] == want

"""Tests for batching (chat.collate), yes/no scoring (yesno, generate.score_yes_no) and generation.

Training supervises only the answer + EOS; scoring reads p_yes/p_no at the first answer
position; both silently go wrong if padding, label masking, image-token expansion or the yes/no
token ids are off, so each is checked against an independent, hand-built expectation.
"""

from __future__ import annotations

import math

import pytest
from conftest import small_corpus, tiny_cfg

import torch

from rlaifv.models.chat import IGNORE_INDEX, answer_ids, collate, encode_prompt, prompt_text
from rlaifv.models.generate import generate_answers, score_yes_no
from rlaifv.models.tiny import build_tiny_vlm, train_tokenizer
from rlaifv.models.yesno import YesNoIds, p_yes_no, yes_no_ids
from rlaifv.sandbox.render import render
from rlaifv.sandbox.world import World



QUESTIONS = [
    "Is there a star in the image? Please answer yes or no.",
    "How many objects are there?",
    "Is there a large red circle at the top left? Please answer yes or no.",
]
ANSWERS = ["Yes.", "There are three objects.", "No."]


@pytest.fixture(scope="module", params=["idefics3", "llava"])
def vlm(request):
    """(arch, cfg, model, processor) for a tiny randomly initialised VLM."""
    arch = request.param
    cfg = tiny_cfg(arch)
    tok = train_tokenizer(small_corpus(), arch, vocab_size=512)
    model, processor = build_tiny_vlm(cfg, tok, seed=0)
    # Sharpen the output layer so probabilities depend visibly on the input: a random tiny
    # model is otherwise near-uniform and a row mix-up could hide inside the tolerance.
    with torch.no_grad():
        model.lm_head.weight.mul_(50.0)
    return arch, cfg, model.eval(), processor


@pytest.fixture(scope="module")
def images():
    return [render(World().scene(i, "test"), 32) for i in range(3)]


def _image_expansion(arch: str, n: int) -> str:
    """What the processor puts in place of one <image> placeholder (no image splitting)."""
    if arch == "idefics3":
        return "<fake_token_around_image><global-img>" + "<image>" * n + "<fake_token_around_image>"
    return "<image>" * n


# --------------------------------------------------------------------------- collate


def test_collate_training_labels_and_right_padding(vlm, images) -> None:
    arch, cfg, _, processor = vlm
    tok = processor.tokenizer
    pad, eos = tok.pad_token_id, tok.eos_token_id
    batch = collate(processor, images, QUESTIONS, ANSWERS)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape == mask.shape == labels.shape and ids.shape[0] == 3
    for i, (q, a) in enumerate(zip(QUESTIONS, ANSWERS)):
        # Independent expectation: the templated prompt with the image placeholder expanded
        # by hand, then the answer's ids and EOS.
        prompt = (
            "<|im_start|>user\n" + _image_expansion(arch, cfg.image_seq_len) + q
            + "<|im_end|>\n<|im_start|>assistant\n"
        )
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        a_ids = tok(a, add_special_tokens=False)["input_ids"] + [eos]
        n = len(p_ids) + len(a_ids)
        assert ids[i, :n].tolist() == p_ids + a_ids
        assert labels[i, : len(p_ids)].tolist() == [IGNORE_INDEX] * len(p_ids)
        assert labels[i, len(p_ids) : n].tolist() == a_ids
        # right padding: pads after the answer, attention 0 there, labels ignored there
        assert ids[i, n:].tolist() == [pad] * (ids.shape[1] - n)
        assert mask[i].tolist() == [1] * n + [0] * (ids.shape[1] - n)
        assert labels[i, n:].tolist() == [IGNORE_INDEX] * (ids.shape[1] - n)
        # exactly len(answer)+1 supervised tokens per row
        assert int((labels[i] != IGNORE_INDEX).sum()) == len(a_ids)
    # the longest row has no padding
    assert mask.sum(1).max().item() == ids.shape[1]
    assert answer_ids(processor, "Yes.") == tok("Yes.", add_special_tokens=False)["input_ids"] + [eos]


def test_collate_image_tokens_per_example(vlm, images) -> None:
    # Each row holds exactly image_seq_len image tokens: idefics3 (32/8)^2/2^2 = 4, llava 16.
    arch, cfg, _, processor = vlm
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    batch = collate(processor, images, QUESTIONS, ANSWERS)
    assert (batch["input_ids"] == image_id).sum(1).tolist() == [cfg.image_seq_len] * 3
    assert cfg.image_seq_len == {"idefics3": 4, "llava": 16}[arch]
    # image tensors are concatenated along the batch dimension, one image per example
    assert batch["pixel_values"].shape[0] == 3
    assert batch["pixel_values"].shape[-2:] == (32, 32)


def test_collate_left_padding_for_generation(vlm, images) -> None:
    _, _, _, processor = vlm
    tok = processor.tokenizer
    batch = collate(processor, images, QUESTIONS, padding_side="left")
    assert "labels" not in batch
    ids, mask = batch["input_ids"], batch["attention_mask"]
    header = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    for i, q in enumerate(QUESTIONS):
        unpadded = encode_prompt(processor, images[i], q)["input_ids"][0].tolist()
        n_pad = ids.shape[1] - len(unpadded)
        assert ids[i].tolist() == [tok.pad_token_id] * n_pad + unpadded
        assert mask[i].tolist() == [0] * n_pad + [1] * len(unpadded)
        # every row ends with the assistant header, so position -1 is the first answer position
        assert ids[i, -len(header) :].tolist() == header
    assert (mask[:, 0] == 0).any()  # the questions differ in length, so some row is padded


# --------------------------------------------------------------------------- p_yes_no


def test_p_yes_no_hand_computed() -> None:
    # Row 0: logits = log([2, 1, 3, 1, 2, 1]) -> softmax = weights / 10.
    #   p_yes = P(1) + P(2) = (1 + 3) / 10 = 0.4 ; p_no = P(3) + P(4) = (1 + 2) / 10 = 0.3
    # Row 1: all-zero logits -> uniform 1/6 -> p_yes = p_no = 2/6.
    # Row 2: row 0 shifted by +1000 (softmax is shift invariant; must not overflow) -> 0.4 / 0.3.
    # Row 3: logits [0, 0, 0, 0, 0, log 5] -> weights [1,1,1,1,1,5], sum 10 -> p_yes = p_no = 0.2.
    w = torch.tensor([2.0, 1.0, 3.0, 1.0, 2.0, 1.0])
    logits = torch.stack([
        w.log(),
        torch.zeros(6),
        w.log() + 1000.0,
        torch.tensor([0, 0, 0, 0, 0, math.log(5)]),
    ])
    p_yes, p_no = p_yes_no(logits, YesNoIds(yes=(1, 2), no=(3, 4)))
    torch.testing.assert_close(p_yes, torch.tensor([0.4, 2 / 6, 0.4, 0.2]), atol=1e-6, rtol=0)
    torch.testing.assert_close(p_no, torch.tensor([0.3, 2 / 6, 0.3, 0.2]), atol=1e-6, rtol=0)


def test_p_yes_no_upcasts_half_precision() -> None:
    # bf16 logits [0, 0, 0, 0] -> exact uniform in float32: p_yes = 1/4 with one yes id.
    p_yes, p_no = p_yes_no(torch.zeros(1, 4, dtype=torch.bfloat16), YesNoIds(yes=(0,), no=(1, 2)))
    assert p_yes.dtype == torch.float32
    assert p_yes.item() == 0.25 and p_no.item() == 0.5


def test_p_yes_no_non_finite_logits_name_the_rows() -> None:
    logits = torch.zeros(4, 6)
    logits[1, 2] = float("nan")
    logits[3, 0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"rows \[1, 3\]"):
        p_yes_no(logits, YesNoIds(yes=(1,), no=(3,)))


# --------------------------------------------------------------------------- score_yes_no / generate


def test_score_yes_no_matches_manual_forward(vlm, images) -> None:
    # Batched, left-padded scoring (batch_size=2 over 3 questions: two chunks) must equal one
    # unpadded forward per question, softmax at the last position, sum of the yes/no ids.
    _, _, model, processor = vlm
    ids = yes_no_ids(processor)
    p_yes, p_no = score_yes_no(model, processor, images, QUESTIONS, batch_size=2)
    manual_yes, manual_no = [], []
    for img, q in zip(images, QUESTIONS):
        enc = encode_prompt(processor, img, q)
        with torch.no_grad():
            probs = torch.softmax(model(**enc).logits[0, -1].float(), -1)
        manual_yes.append(probs[list(ids.yes)].sum().item())
        manual_no.append(probs[list(ids.no)].sum().item())
    # Relative tolerance only: with the sharpened head the probabilities are small, so an
    # absolute tolerance would accept anything.
    assert p_yes == pytest.approx(manual_yes, rel=1e-4, abs=0)
    assert p_no == pytest.approx(manual_no, rel=1e-4, abs=0)
    # the check discriminates: the three rows differ by far more than the tolerance, so a
    # row mix-up or a wrong (padded) last position would fail
    for ps in (manual_yes, manual_no):
        assert min(abs(a / b - 1) for a, b in ((ps[0], ps[1]), (ps[0], ps[2]), (ps[1], ps[2]))) > 1e-2
    assert all(0.0 <= y + n <= 1.0 for y, n in zip(p_yes, p_no))


def test_generate_answers_seeded_sampling_is_deterministic(vlm, images) -> None:
    _, _, model, processor = vlm
    kw = dict(do_sample=True, temperature=1.0, max_new_tokens=6)
    a = generate_answers(model, processor, images, QUESTIONS, seed=3, **kw)
    b = generate_answers(model, processor, images, QUESTIONS, seed=3, **kw)
    c = generate_answers(model, processor, images, QUESTIONS, seed=4, **kw)
    assert a == b
    assert len(a) == 3 and all(isinstance(x, str) for x in a)
    assert a != c  # the seed really drives sampling


def test_generate_greedy_batched_equals_single(vlm, images) -> None:
    # Left padding must not change greedy outputs: batch (in chunks of 2) == one at a time.
    _, _, model, processor = vlm
    batched = generate_answers(model, processor, images, QUESTIONS, max_new_tokens=6, batch_size=2)
    single = [generate_answers(model, processor, [img], [q], max_new_tokens=6)[0] for img, q in zip(images, QUESTIONS)]
    assert batched == single


def test_prompt_text_ends_with_generation_header(vlm) -> None:
    _, _, _, processor = vlm
    assert prompt_text(processor, "Q?") == "<|im_start|>user\n<image>Q?<|im_end|>\n<|im_start|>assistant\n"

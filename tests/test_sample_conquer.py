"""Sampling (prefill once, per-candidate seeds) and conquer (shared prefix == naive)."""

from __future__ import annotations

import pytest
import torch

from rlaifv.records import PolarQuestion, Prompt
from rlaifv.sandbox.render import render
from rlaifv.sandbox.world import World
from rlaifv.stages.conquer import ConquerConfig, _penalised, conquer
from rlaifv.stages.sample import SampleConfig, SeededSampler, _top_p, candidate_seed, generate_candidates, sample


@pytest.fixture(scope="module")
def model_proc(tiny_sandbox_model):
    from rlaifv.models.load import load_vlm

    m, p = load_vlm(tiny_sandbox_model)
    with torch.no_grad():
        m.lm_head.weight.mul_(3.0)  # sharper distributions: answers and scores differ per input
    return m, p


def test_candidate_seed_is_stable_and_distinct():
    assert candidate_seed(0, "p", 1) == candidate_seed(0, "p", 1)
    assert len({candidate_seed(0, "p", k) for k in range(100)}) == 100
    assert candidate_seed(0, "p", 1) != candidate_seed(1, "p", 1)


def test_top_p_by_hand():
    # p = [0.5, 0.3, 0.2]; top_p 0.7 keeps 0.5 (cum before 0) and 0.3 (cum before 0.5 < 0.7), drops 0.2.
    out = _top_p(torch.tensor([[0.5, 0.3, 0.2]]), 0.7)
    assert torch.allclose(out, torch.tensor([[0.625, 0.375, 0.0]]))


def test_seeded_sampler_uses_one_generator_per_row():
    scores = torch.zeros(2, 50)
    a = SeededSampler([1, 2], 1.0, 1.0)(None, scores.clone()).argmax(-1)
    b = SeededSampler([1, 3], 1.0, 1.0)(None, scores.clone()).argmax(-1)
    assert a[0] == b[0]  # row 0 has the same seed in both


def test_shared_prefill_equals_duplicated_prompts_and_single_regeneration(model_proc):
    m, p = model_proc
    imgs = [render(World().scene(i, "val")) for i in range(2)]
    qs = ["Describe the image in detail.", "How many objects are there?"]
    seeds = [[11, 12, 13], [21, 22, 23]]
    cfg = SampleConfig(max_new_tokens=16, temperature=1.0)
    shared = generate_candidates(m, p, imgs, qs, seeds, cfg)
    naive = generate_candidates(m, p, imgs, qs, seeds, SampleConfig(max_new_tokens=16, temperature=1.0, share_prefill=False))
    assert shared == naive
    assert len(set(shared[0])) > 1  # candidates differ only by their draws
    alone = generate_candidates(m, p, imgs[1:], qs[1:], [[22]], cfg)
    assert alone[0][0] == shared[1][1]  # any candidate regenerates from its seed alone


def test_sample_records(model_proc):
    m, p = model_proc
    prompts = [Prompt("x", "Describe the image in detail.", image="x.png")]
    cands = sample(m, p, prompts, [render(World().scene(0))], SampleConfig(n=3, max_new_tokens=8), model_name="tiny")
    assert [c.id for c in cands] == ["x#0", "x#1", "x#2"]
    assert cands[0].decoding["temperature"] == 0.7 and cands[0].model == "tiny"
    assert cands[1].seed == candidate_seed(0, "x", 1)


def test_confounded_temperatures_ablation(model_proc):
    """Candidate k samples at temps[k % len]; each equals a deconfounded run at its temperature."""
    m, p = model_proc
    prompts, imgs = [Prompt("x", "Describe the image in detail.", image="x.png")], [render(World().scene(0))]
    mixed = sample(m, p, prompts, imgs, SampleConfig(n=4, max_new_tokens=10, confounded_temperatures=(0.3, 1.5)))
    assert [c.decoding["temperature"] for c in mixed] == [0.3, 1.5, 0.3, 1.5]
    cold = sample(m, p, prompts, imgs, SampleConfig(n=4, max_new_tokens=10, temperature=0.3))
    hot = sample(m, p, prompts, imgs, SampleConfig(n=4, max_new_tokens=10, temperature=1.5))
    assert [c.text for c in mixed] == [cold[0].text, hot[1].text, cold[2].text, hot[3].text]
    with pytest.raises(ValueError, match="temperature"):
        SeededSampler([1, 2], [0.5], 1.0)


def _groups():
    imgs = [render(World().scene(i, "val")) for i in range(2)]
    qs = [["Is there a star in the image? Please answer yes or no.", "Is there a large red circle at the top left? Please answer yes or no."],
          ["Is there a ring? Please answer yes or no.", "Is there a small blue square in the center? Please answer yes or no.", "Is there a cross?"]]
    return [(img, [PolarQuestion(f"p{i}#0/{j}", "c", q) for j, q in enumerate(g)]) for i, (img, g) in enumerate(zip(imgs, qs))]


@pytest.mark.parametrize("mode", ["packed", "batched"])
def test_conquer_shared_prefix_equals_naive(model_proc, mode):
    m, p = model_proc
    shared = conquer(m, p, _groups(), ConquerConfig(share_prefix=True, batch_size=2, prefix_mode=mode, pack_tokens=12))
    naive = conquer(m, p, _groups(), ConquerConfig(share_prefix=False))
    assert [s.claim_id for s in shared] == [s.claim_id for s in naive]
    for a, b in zip(shared, naive):
        assert a.p_yes == pytest.approx(b.p_yes, abs=1e-4) and a.p_no == pytest.approx(b.p_no, abs=1e-4)
    assert len({round(s.p_yes, 6) for s in shared}) > 1


def test_describe_then_answer_mode_runs_and_differs(model_proc):
    m, p = model_proc
    direct = conquer(m, p, _groups(), ConquerConfig())
    dta = conquer(m, p, _groups(), ConquerConfig(mode="describe_then_answer", describe_max_new_tokens=12))
    assert len(dta) == len(direct)
    assert any(abs(a.p_yes - b.p_yes) > 1e-6 for a, b in zip(direct, dta))


def test_repetition_penalty_by_hand():
    # penalty 2: positive logit of a seen token halves, negative doubles; unseen tokens unchanged.
    logits = torch.tensor([[2.0, -1.0, 3.0]])
    out = _penalised(logits, [[0, 1, 1]], 2.0)
    assert out.tolist() == [[1.0, -2.0, 3.0]]


def test_bad_mode_is_rejected():
    with pytest.raises(ValueError, match="mode"):
        ConquerConfig(mode="vibes")


def test_describe_then_match_by_hand(monkeypatch):
    # The labeler "describes" a fixed text; claims are accepted iff the described object matches
    # every attribute the claim states.
    import rlaifv.sandbox.standins as S
    import rlaifv.stages.conquer as C

    monkeypatch.setattr(S, "generate_answers", lambda *a, **k: ["There is a large red circle at the top left. There is a small blue star in the center."])
    monkeypatch.setattr(C, "yes_no_ids", lambda processor: None)
    qs = [PolarQuestion("p#0/0", "There is a large red circle at the top left.", "q"),
          PolarQuestion("p#0/1", "There is a small blue star at the top left.", "q"),   # wrong cell
          PolarQuestion("p#0/2", "There is a blue star.", "q"),                        # unstated attributes are fine
          PolarQuestion("p#0/3", "There is a green square in the center.", "q"),       # absent
          PolarQuestion("p#0/4", "The sky is blue.", "q"),                              # unparsable: rejected
          # holistic ablation: the whole answer is accepted iff every object in it matches
          PolarQuestion("p#1/holistic", "There is a red circle. There is a small blue star in the center.", "q"),
          PolarQuestion("p#2/holistic", "There is a red circle. There is a green square.", "q"),
          PolarQuestion("p#3/holistic", "Nothing to see.", "q")]
    out = C.conquer(None, type("P", (), {"tokenizer": None})(), [(None, qs)], ConquerConfig(mode="describe_then_match"))
    assert [s.accepted for s in out] == [True, False, True, False, False, True, False, False]

"""Loud diagnoses: a labeler that is not answering yes/no, and a run that ends with 0 pairs."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import small_corpus

from rlaifv.models.tiny import TinyVLMConfig, build_tiny_vlm, save_tiny, train_tokenizer
from rlaifv.records import Candidate, Claim, ClaimScore, Prompt, ScoredCandidate
from rlaifv.stages.conquer import mass_summary
from rlaifv.stages.pairs import PairsConfig, make_pairs


def _score(cid: str, p_yes: float, p_no: float) -> ClaimScore:
    return ClaimScore(claim_id=cid, question="q", p_yes=p_yes, p_no=p_no)


def test_mass_summary_by_hand() -> None:
    # masses 0.1, 0.2, 0.9 -> mean 0.4 < 0.5: warn; two of three below the threshold
    scores = [_score("a#0/0", 0.05, 0.05), _score("a#0/1", 0.15, 0.05), _score("a#0/2", 0.5, 0.4)]
    rep = mass_summary(scores, 0.5)
    assert rep["mean"] == pytest.approx(0.4) and rep["min"] == pytest.approx(0.1) and rep["max"] == pytest.approx(0.9)
    assert rep["median"] == pytest.approx(0.2) and rep["below_threshold"] == 2 and rep["questions"] == 3
    assert "mass is low (mean 0.400 < 0.5; 2 of 3 questions below)" in rep["warning"]
    assert mass_summary(scores, 0.3)["warning"] is None  # 0.4 >= 0.3
    assert mass_summary([], 0.5) == {"questions": 0, "warning": None}


def _scored(prompt: str, k: int, rejected: list[bool]) -> ScoredCandidate:
    return ScoredCandidate(candidate_id=f"{prompt}#{k}", prompt_id=prompt, text=f"answer {k} " * (k + 1),
                           claims=[f"c{i}" for i in range(len(rejected))], rejected=rejected, score=-float(sum(rejected)))


def test_zero_pairs_all_tied_every_claim_accepted() -> None:
    # 3 candidates, 2 claims each, all accepted: C(3,2) = 3 combinations, all tied at score 0.
    scored = [_scored("p", k, [False, False]) for k in range(3)]
    pairs, stats = make_pairs(scored, {"p": Prompt("p", "Describe.", "x.png")}, PairsConfig())
    assert pairs == []
    assert stats["diagnosis"] == "all 3 candidate combinations tied: every claim accepted (6 claims)"


def test_zero_pairs_gap_below_threshold() -> None:
    # scores 0, -1, -2 with min_score_gap 3: 0 ties, 3 below the gap; 3 of 6 claims rejected
    scored = [_scored("p", 0, [False, False]), _scored("p", 1, [True, False]), _scored("p", 2, [True, True])]
    _, stats = make_pairs(scored, {"p": Prompt("p", "Describe.", "x.png")}, PairsConfig(min_score_gap=3))
    assert stats["diagnosis"] == "no candidate combination reached the score gap 3 (0 tied, 3 below the gap of 3; 3 of 6 claims rejected)"


def test_pairs_found_have_no_diagnosis() -> None:
    scored = [_scored("p", 0, [False]), _scored("p", 1, [True])]
    pairs, stats = make_pairs(scored, {"p": Prompt("p", "Describe.", "x.png")}, PairsConfig(length_balance=False))
    assert len(pairs) == 1 and stats["diagnosis"] is None


def _write_jsonl(path, records) -> None:
    path.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))


def test_pairs_cli_prints_why_there_are_no_pairs(tmp_path, rlaifv_bin) -> None:
    (tmp_path / "x.png").write_bytes(b"")
    _write_jsonl(tmp_path / "prompts.jsonl", [Prompt("p", "Describe.", "x.png")])
    cands = [Candidate(prompt_id="p", sample_index=k, seed=k, text=f"There is a cat number {k}.", decoding={}, model="m") for k in range(3)]
    _write_jsonl(tmp_path / "cands.jsonl", cands)
    _write_jsonl(tmp_path / "claims.jsonl", [Claim(candidate_id=c.id, claim_index=i, text=f"fact {i}") for c in cands for i in range(2)])
    _write_jsonl(tmp_path / "scores.jsonl", [_score(f"{c.id}/{i}", 0.9, 0.05) for c in cands for i in range(2)])
    proc = subprocess.run(rlaifv_bin + ["pairs", "--prompts", str(tmp_path / "prompts.jsonl"), "--candidates", str(tmp_path / "cands.jsonl"),
                                        "--claims", str(tmp_path / "claims.jsonl"), "--scores", str(tmp_path / "scores.jsonl"),
                                        "--out", str(tmp_path / "pairs")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "0 pairs: all 3 candidate combinations tied: every claim accepted (6 claims)" in " ".join(proc.stdout.split())


@pytest.fixture(scope="module")
def random_vlm(tmp_path_factory):
    """An untrained tiny VLM: its first answer token is almost never yes or no (mass ~ 4 / vocab)."""
    cfg = TinyVLMConfig(image_size=48, patch_size=8, vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=32,
                        text_layers=1, text_heads=2, text_kv_heads=2, intermediate=64, vocab_size=600)
    model, processor = build_tiny_vlm(cfg, train_tokenizer(small_corpus(), "idefics3", 600), seed=0)
    return save_tiny(model, processor, tmp_path_factory.mktemp("random") / "model", cfg)


def test_feedback_warns_about_a_labeler_that_does_not_answer_yes_no(tmp_path, rlaifv_bin, random_vlm) -> None:
    out = tmp_path / "run"
    proc = subprocess.run(rlaifv_bin + ["feedback", "--sandbox-prompts", "2", "--policy", "sandbox:policy", "--labeler", str(random_vlm),
                                        "--n", "2", "--max-new-tokens", "24", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    said = " ".join(proc.stdout.split())
    assert "labeler yes+no mass: mean" in said and "warning: the labeler's yes+no probability mass is low" in said
    summary = json.loads((out / "feedback.json").read_text())
    mass = json.loads((out / "scores" / "mass.json").read_text())
    assert summary["conquer"]["mean"] == mass["mean"] < 0.05
    assert any("yes+no probability mass is low" in w for w in summary["warnings"])

"""`rlaifv iterate` on a user's own data (issue 12.3): checkpoint selection without ground truth, by
the labeler-judged hallucination rate on held-out prompts, compared with the current policy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from photos import photo_prompts

from rlaifv.config import ConfigError, load_config
from rlaifv.records import Candidate, Claim, ClaimScore, PreferencePair, Prompt
from rlaifv.stages.iterate import held_out_ids
from rlaifv.stages.select import SelectionConfig, hallucination_metrics, select_checkpoint
from rlaifv.store import read_records


def test_hallucination_metrics_by_hand():
    cands = [Candidate("p", k, k, t, {}, "m") for k, t in enumerate(["A cat. A dog.", "A cat sits.", ""])]
    claims = [Claim("p#0", 0, "A cat."), Claim("p#0", 1, "A dog."), Claim("p#1", 0, "A cat sits."), Claim("p#1", 1, "Unscored.")]
    scores = [ClaimScore("p#0/0", "q", 0.9, 0.1), ClaimScore("p#0/1", "q", 0.2, 0.7), ClaimScore("p#1/0", "q", 0.6, 0.3)]
    m = hallucination_metrics(cands, claims, scores)
    # 3 judged claims, 1 rejected (p_no >= p_yes); the empty answer says nothing: 3 claims / 3 answers
    assert m["hallucination_rate"] == pytest.approx(1 / 3) and m["claims"] == 3 and m["rejected_claims"] == 1
    assert m["unjudged_claims"] == 1 and m["answers"] == 3 and m["claims_per_answer"] == 1.0 and m["answers_without_claims"] == 1
    assert m["avg_words"] == pytest.approx((4 + 3 + 0) / 3)
    assert hallucination_metrics(cands[2:], [], [])["hallucination_rate"] is None


def _m(rate, cpa):
    return {"hallucination_rate": rate, "claims_per_answer": cpa}


def test_labeler_selection_beats_the_current_policy_or_keeps_it(tmp_path):
    cfg = SelectionConfig(kind="labeler", min_claims_ratio=0.8)
    scores = {"cur": _m(0.5, 2.0), "a": _m(0.4, 1.9), "b": _m(0.2, 1.0), "c": _m(0.45, 2.2), "d": _m(None, 0.0)}
    measured = []

    def measure(model):
        measured.append(model)
        return scores[model]

    res = select_checkpoint(["a", "b", "c", "d"], None, cfg, tmp_path / "s.json", measure=measure, current="cur")
    # b hallucinates least but says half as much (1.0 < 0.8 * 2.0); d judged nothing: a (0.4 < 0.5) wins
    assert res["selected"] == "a" and not res["kept_current"] and measured == ["cur", "a", "b", "c", "d"]
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["current"] == {"policy": "cur", **scores["cur"]} and saved["scores"] == {k: scores[k] for k in "abcd"}
    # a rerun measures nothing again
    again = select_checkpoint(["a", "b", "c", "d"], None, cfg, tmp_path / "s.json", measure=lambda m: 1 / 0, current="cur")
    assert again["selected"] == "a"
    # no checkpoint is better than the current policy: it is kept (ties are not better)
    worse = {"cur": _m(0.3, 1.0), "a": _m(0.3, 1.0), "b": _m(0.6, 1.0)}
    kept = select_checkpoint(["a", "b"], None, cfg, tmp_path / "t.json", measure=worse.get, current="cur")
    assert kept["selected"] == "cur" and kept["kept_current"]
    with pytest.raises(ValueError, match="measure"):
        select_checkpoint(["a"], None, cfg, tmp_path / "u.json", current="cur")


def test_command_selection_keeps_each_output(tmp_path):
    cmd = f"{sys.executable} -c \"import sys; print('evaluating', sys.argv[1]); print(len(sys.argv[1]))\" {{checkpoint}}"
    record = tmp_path / "iter-1" / "selection.json"
    res = select_checkpoint(["/ck/step-1", "/ck/step-22"], None, SelectionConfig(kind="command", command=cmd), record)
    assert res["selected"] == "/ck/step-1"
    log = (record.parent / "selection" / "step-22.command.log").read_text()
    assert "evaluating /ck/step-22" in log and "# exit code 0" in log
    with pytest.raises(ConfigError, match="selection.command"):
        SelectionConfig(kind="command")


def test_held_out_prompts_are_a_seeded_draw_independent_of_order():
    prompts = [Prompt(f"p{i}", "q", f"{i}.jpg") for i in range(10)]
    cfg = SelectionConfig(holdout=3, holdout_seed=7)
    held = held_out_ids(prompts, cfg)
    assert len(held) == 3 and held == held_out_ids(prompts[::-1], cfg)
    assert held != held_out_ids(prompts, SelectionConfig(holdout=3, holdout_seed=8))
    with pytest.raises(ConfigError, match="leaves no prompts"):
        held_out_ids(prompts, SelectionConfig(holdout=10))


def test_iterate_refuses_a_served_policy_but_not_a_served_fixed_labeler():
    """A server keeps the model it started with; iterate trains a new policy every iteration."""
    from rlaifv.stages.iterate import IterateConfig, resolve

    def cfg(sample: str, conquer: str, labeler: str) -> IterateConfig:
        c = load_config(IterateConfig, None, {"policy": "p", "labeler": labeler, "prompts": "x.jsonl", "feedback": {
            "sample": {"backend": sample, "endpoint": {"base_url": "http://127.0.0.1:8000/v1"}},
            "conquer": {"backend": conquer, "endpoint": {"base_url": "http://127.0.0.1:8001/v1"}}}})
        return c

    with pytest.raises(ConfigError, match="sample.backend openai"):
        resolve(cfg("openai", "hf", "lab"))
    with pytest.raises(ConfigError, match="labeler self"):
        resolve(cfg("hf", "openai", "self"))
    assert resolve(cfg("hf", "openai", "lab")).labeler == "lab"  # a fixed labeler may be served


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory) -> Path:
    """A tiny LLaVA built from config (random weights, its own tokenizer): a user's model, not the sandbox's."""
    from conftest import tiny_cfg

    from rlaifv.models.tiny import build_tiny_vlm, save_tiny, train_tokenizer

    texts = ["Describe the image in detail. There is a woman in a uniform. She wears a tie. Is there a flag? "
             "Please answer yes or no. Yes. No."] * 8
    cfg = tiny_cfg("llava")
    model, processor = build_tiny_vlm(cfg, train_tokenizer(texts, "llava", cfg.vocab_size), seed=0)
    return save_tiny(model, processor, tmp_path_factory.mktemp("policy") / "model", cfg)


def _ids(path: Path, kind) -> set[str]:
    return {r.prompt_id for r in read_records(path, kind)}


def test_iterate_on_photos_selects_by_the_labeler_without_the_sandbox(tiny_policy, tmp_path, rlaifv_bin):
    prompts = photo_prompts(tmp_path / "data")
    config = {"iterations": 1, "feedback": {"on_error": "skip", "sample": {"n": 4, "max_new_tokens": 12, "temperature": 1.0}},
              "train": {"finetune": "full", "lr": 1e-3, "epochs": 1.0, "batch_size": 2, "checkpoints_per_epoch": 2, "progress": False},
              "selection": {"holdout": 1, "answers_per_prompt": 2}}
    (tmp_path / "it.yaml").write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    res = subprocess.run(rlaifv_bin + ["iterate", "--config", str(tmp_path / "it.yaml"), "--prompts", str(prompts), "--policy",
                                       str(tiny_policy), "--labeler", "self", "--out", str(run)],
                         capture_output=True, text=True, env=dict(os.environ, COLUMNS="200"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    # nothing of the sandbox ran: no sandbox report, no sandbox selection metrics, no scenes rendered
    assert not (run / "iter-0.json").exists() and not (run / "start_metrics.json").exists() and "test scenes" not in res.stdout
    assert [p.name for p in run.rglob("*.png")] == ["report.png"]  # no sandbox scene rendered (the photos are JPEGs)
    held = _ids(run / "holdout" / "prompts.jsonl", Prompt)
    assert len(held) == 1
    # the held-out prompt never reaches the feedback or the pairs
    it = run / "iter-1"
    assert not held & _ids(it / "prompts" / "prompts.jsonl", Prompt) and len(_ids(it / "prompts" / "prompts.jsonl", Prompt)) == 3
    assert not held & _ids(it / "feedback" / "candidates", Candidate)
    assert not held & {p.prompt_id for p in read_records(it / "feedback" / "pairs", PreferencePair)}
    sel = json.loads((it / "selection.json").read_text())
    assert sel["kind"] == "labeler" and sel["labeler"] == str(tiny_policy) and sel["holdout"]["prompts"] == 1
    checkpoints = sorted(str(p.resolve()) for p in (it / "train" / "checkpoints").iterdir())
    assert sorted(sel["scores"]) == checkpoints and sel["current"]["policy"] == str(tiny_policy)
    for model, numbers in [(str(tiny_policy), sel["current"]), *sel["scores"].items()]:
        folder = it / "selection" / ("current" if model == str(tiny_policy) else Path(model).name)
        assert _ids(folder / "candidates", Candidate) == held  # judged on the held-out prompt only
        cands = list(read_records(folder / "candidates", Candidate))
        assert len(cands) == 2 and {c.model for c in cands} == {model}
        manifest = json.loads((folder / "scores" / "manifest.json").read_text())
        assert manifest["config"]["mode"] == "direct" and manifest["config"]["model"] == str(tiny_policy)  # self: the current policy judges
        claims = list(read_records(folder / "claims", Claim))
        rejected = sum(not s.accepted for s in read_records(folder / "scores", ClaimScore))
        assert numbers["claims"] == len(claims) and numbers["rejected_claims"] == rejected
        assert numbers["hallucination_rate"] == (pytest.approx(rejected / len(claims)) if claims else None)
    # the rule: the lowest rate wins only if below the current policy's, else the current policy is kept
    better = [c for c, m in sel["scores"].items() if m["hallucination_rate"] is not None and sel["current"]["hallucination_rate"] is not None
              and m["hallucination_rate"] < sel["current"]["hallucination_rate"]
              and m["claims_per_answer"] >= 0.8 * sel["current"]["claims_per_answer"]]
    assert sel["selected"] == (min(better, key=lambda c: sel["scores"][c]["hallucination_rate"]) if better else str(tiny_policy))
    rows = json.loads((run / "report.json").read_text())
    assert [r["iteration"] for r in rows] == [0, 1]
    assert rows[0]["hallucination_rate"] == sel["current"]["hallucination_rate"] and "chair_i" not in rows[0]
    chosen = sel["current"] if sel["kept_current"] else sel["scores"][sel["selected"]]
    assert rows[1]["hallucination_rate"] == chosen["hallucination_rate"] and rows[1]["pairs"] >= 1
    md = (run / "report.md").read_text()
    assert md.startswith("| iteration | halluc. rate (labeler) | claims/answer | pairs |") and "CHAIR" not in md

"""`rlaifv iterate`: checkpoint selection by hand, and a small real run through the CLI (resume, report)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlaifv.stages.select import SelectionConfig, SelectionError, select_checkpoint


def test_sandbox_selection_keeps_recall(tmp_path):
    scores = {"a": {"chair_i": 0.20, "recall": 0.80}, "b": {"chair_i": 0.10, "recall": 0.70}, "c": {"chair_i": 0.15, "recall": 0.85}}
    cfg = SelectionConfig(kind="sandbox", recall_tolerance=0.03)
    # floor = 0.84 - 0.03 = 0.81: only c qualifies, although b hallucinates least
    res = select_checkpoint(["a", "b", "c"], {"recall": 0.84}, cfg, tmp_path / "s.json", measure=lambda c: scores[c])
    assert res["selected"] == "c"
    # with a lower floor (0.70 - 0.03), the least hallucinating qualifying checkpoint wins
    res = select_checkpoint(["a", "b", "c"], {"recall": 0.70}, cfg, tmp_path / "t.json", measure=lambda c: scores[c])
    assert res["selected"] == "b"
    # none qualifies: the highest recall
    res = select_checkpoint(["a", "b"], {"recall": 0.95}, cfg, tmp_path / "u.json", measure=lambda c: scores[c])
    assert res["selected"] == "a"
    # the record is reused: nothing is measured again
    again = select_checkpoint(["a", "b", "c"], {"recall": 0.84}, cfg, tmp_path / "s.json", measure=lambda c: 1 / 0)
    assert again["selected"] == "c"


def test_pope_guard_and_keep_current(tmp_path):
    scores = {"a": {"chair_i": 0.10, "recall": 0.85, "pope_f1": 0.30}, "b": {"chair_i": 0.20, "recall": 0.84, "pope_f1": 0.62}}
    start = {"recall": 0.84, "pope_f1": 0.65}
    cfg = SelectionConfig(kind="sandbox", recall_tolerance=0.03, pope_tolerance=0.05)
    # a hallucinates least but lost yes/no answering (0.30 < 0.65 - 0.05): b
    res = select_checkpoint(["a", "b"], start, cfg, tmp_path / "s.json", measure=lambda c: scores[c], current="p0")
    assert res["selected"] == "b" and not res["kept_current"]
    # nothing passes: the highest recall, or with keep_current the current policy
    strict = SelectionConfig(kind="sandbox", recall_tolerance=0.0, pope_tolerance=0.01)
    assert select_checkpoint(["a", "b"], start, strict, tmp_path / "t.json", measure=lambda c: scores[c])["selected"] == "a"
    keep = SelectionConfig(kind="sandbox", recall_tolerance=0.0, pope_tolerance=0.01, keep_current=True)
    res = select_checkpoint(["a", "b"], start, keep, tmp_path / "u.json", measure=lambda c: scores[c], current="p0")
    assert res["selected"] == "p0" and res["kept_current"]
    with pytest.raises(SelectionError, match="POPE"):
        select_checkpoint(["a"], {"recall": 0.8}, cfg, tmp_path / "v.json", measure=lambda c: scores[c])


def test_command_selection(tmp_path):
    py = sys.executable
    cmd = f"{py} -c \"import sys; print('log line'); print(len(sys.argv[1]))\" {{checkpoint}}"
    res = select_checkpoint(["aaa", "b", "cc"], None, SelectionConfig(kind="command", command=cmd), tmp_path / "s.json")
    assert res["selected"] == "b" and res["scores"]["aaa"]["score"] == 3.0
    res = select_checkpoint(["aaa", "b", "cc"], None, SelectionConfig(kind="command", command=cmd, maximize=True), tmp_path / "m.json")
    assert res["selected"] == "aaa"
    with pytest.raises(SelectionError, match="no number"):
        select_checkpoint(["x"], None, SelectionConfig(kind="command", command="echo nothing"), tmp_path / "n.json")
    assert select_checkpoint(["x", "y"], None, SelectionConfig(kind="last"), tmp_path / "l.json")["selected"] == "y"


def _config(tmp_path: Path, iterations: int) -> Path:
    cfg = {
        "out": str(tmp_path / "run"), "iterations": iterations, "policy": "sandbox:policy", "labeler": "sandbox:labeler",
        "sandbox_prompts": 6, "report_scenes": 6, "report_pope": False,
        "feedback": {"on_error": "skip", "sample": {"n": 4, "max_new_tokens": 96, "prompts_per_batch": 6},
                     "conquer": {"mode": "describe_then_match"}},
        "train": {"finetune": "full", "lr": 1e-4, "epochs": 1.0, "batch_size": 4, "nll_weight": 1.0, "checkpoints_per_epoch": 2,
                  "progress": False},
        "selection": {"kind": "sandbox", "n_scenes": 4},
    }
    path = tmp_path / f"iterate-{iterations}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_iterate_cli_runs_resumes_and_reports(tmp_path, rlaifv_bin):
    env = dict(os.environ, COLUMNS="200")
    first = subprocess.run(rlaifv_bin + ["iterate", "--config", str(_config(tmp_path, 1))], capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    run = tmp_path / "run"
    done1 = json.loads((run / "iter-1" / "done.json").read_text())
    assert Path(done1["selected"]).parent == (run / "iter-1" / "train" / "checkpoints").resolve()
    stamp = (run / "iter-1" / "done.json").stat().st_mtime_ns
    # extend the finished run by one iteration: iteration 1 is reused, iteration 2 starts from its policy
    second = subprocess.run(rlaifv_bin + ["iterate", "--config", str(_config(tmp_path, 2))], capture_output=True, text=True, env=env)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    assert (run / "iter-1" / "done.json").stat().st_mtime_ns == stamp
    done2 = json.loads((run / "iter-2" / "done.json").read_text())
    cands = [json.loads(line) for f in sorted((run / "iter-2" / "feedback" / "candidates").glob("shard-*")) for line in f.read_text().splitlines()]
    assert {c["model"] for c in cands} == {done1["selected"]}  # the selected checkpoint is the next policy
    manifest = json.loads((run / "iter-2" / "train" / "manifest.json").read_text())
    assert manifest["config"]["ref_model"] == done1["selected"]  # ... and the next reference
    rows = json.loads((run / "report.json").read_text())
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert all(0 <= r["chair_i"] <= 1 and 0 <= r["recall"] <= 1 and r["avg_length"] > 0 for r in rows)
    assert rows[1]["pairs"] == done1["row"]["pairs"] > 0 and rows[2]["policy"] == done2["selected"]
    assert "| iteration | CHAIR_s |" in (run / "report.md").read_text()
    assert (run / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "CHAIR_i" in second.stdout


def test_summarize_runs_by_hand(tmp_path):
    from rlaifv.eval.iterations import summarize, summary_markdown

    for name, ci in (("a", [0.3, 0.2]), ("b", [0.5, 0.1])):
        (tmp_path / name).mkdir()
        rows = [{"iteration": i, "chair_i": v, "recall": 0.8, "pairs": None if i == 0 else 10 * (i + 1)} for i, v in enumerate(ci)]
        (tmp_path / name / "report.json").write_text(json.dumps(rows))
    s = summarize([tmp_path / "a", tmp_path / "b"])
    assert s[0]["chair_i"] == pytest.approx(0.4) and s[0]["chair_i_std"] == pytest.approx(0.1414213, abs=1e-6)
    assert s[1]["chair_i"] == pytest.approx(0.15) and "pairs" not in s[0] and s[1]["pairs"] == 20
    md = summary_markdown(s)
    assert "| 0 | - | 0.400 ± 0.141 | 0.800 ± 0.000 |" in md
    assert "false_mentions" not in s[0]  # no attr_err in these reports: nothing derived


def test_false_mentions_by_hand(tmp_path):
    """CHAIR_i 0.2 and 25% of the correct mentions with a wrong attribute: 0.2 + 0.25 * 0.8 = 0.4."""
    from rlaifv.eval.iterations import false_mention_rate, summarize, summary_markdown

    assert false_mention_rate({"chair_i": 0.2, "attr_err": 0.25}) == pytest.approx(0.4)
    assert false_mention_rate({"chair_i": 0.2}) is None
    for name, (ci, ae) in (("a", (0.2, 0.25)), ("b", (0.0, 0.5))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps([{"iteration": 0, "chair_i": ci, "attr_err": ae}]))
    s = summarize([tmp_path / "a", tmp_path / "b"])
    assert s[0]["false_mentions"] == pytest.approx(0.45)
    assert "| attr. err | false mentions |" in summary_markdown(s)

"""The feedback engine end to end on a tiny sandbox model: stages, CLI, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import yaml

from rlaifv.records import Candidate, ClaimScore, PolarQuestion, Prompt
from rlaifv.store import read_records


def _cfg(tmp_path: Path, model: Path, out: Path, **extra) -> Path:
    cfg = {
        "sandbox_prompts": 6,
        "out": str(out),
        "on_error": "skip",
        "sample": {"model": str(model), "n": 4, "max_new_tokens": 24, "prompts_per_batch": 2, "temperature": 1.0},
        "conquer": {"model": str(model)},
        **extra,
    }
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", COLUMNS="200")


def _snapshot(run: Path) -> dict[str, list[str]]:
    """Every record line of every stage folder (order included), plus the pairs."""
    snap = {}
    for stage in ("candidates", "claims", "questions", "scores", "pairs"):
        lines = []
        for f in sorted((run / stage).glob("shard-*.jsonl*")):
            lines += f.read_text().splitlines()
        snap[stage] = lines
    rejects = run / "claims" / "rejects.jsonl"
    snap["rejects"] = sorted(rejects.read_text().splitlines()) if rejects.exists() else []
    return snap


def test_feedback_python_api(tiny_sandbox_model, tmp_path):
    from rlaifv.config import load_config
    from rlaifv.stages.feedback import FeedbackConfig, feedback

    cfg = load_config(FeedbackConfig, _cfg(tmp_path, tiny_sandbox_model, tmp_path / "run"))
    summary = feedback(cfg)
    run = tmp_path / "run"
    cands = list(read_records(run / "candidates", Candidate))
    assert len(cands) == 6 * 4 and summary["counts"]["candidates"] == 24
    assert len({c.seed for c in cands}) == 24  # a recorded seed per candidate
    qs = list(read_records(run / "questions", PolarQuestion))
    scores = list(read_records(run / "scores", ClaimScore))
    assert {q.claim_id for q in qs} == {s.claim_id for s in scores}
    for s in scores:
        assert 0.0 <= s.p_yes <= 1.0 and 0.0 <= s.p_no <= 1.0
    stats = json.loads((run / "pairs" / "stats.json").read_text())
    assert stats["candidates"] + stats.get("unpairable", 0) >= 0
    for stage in ("candidates", "claims", "questions", "scores"):
        assert (run / stage / "manifest.json").exists()
    prompts = list(read_records(run / "prompts" / "prompts.jsonl", Prompt))
    assert all("scene" in p.metadata for p in prompts)  # ground truth kept with the record
    # truncation is counted in the summary, and warned about when half or more of the answers are cut
    n_cut = sum(1 for c in cands if c.decoding.get("truncated"))
    assert summary["counts"]["truncated"] == n_cut
    assert any("truncated" in w for w in summary["warnings"]) == (n_cut * 2 >= len(cands))


def test_feedback_killed_and_resumed_equals_uninterrupted(tiny_sandbox_model, tmp_path, rlaifv_bin):
    full = tmp_path / "full"
    subprocess.run(rlaifv_bin + ["feedback", "--config", str(_cfg(tmp_path, tiny_sandbox_model, full))], env=_env(), check=True, capture_output=True, timeout=300)

    killed = tmp_path / "killed"
    cfg = _cfg(tmp_path, tiny_sandbox_model, killed)
    proc = subprocess.Popen(rlaifv_bin + ["feedback", "--config", str(cfg)], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    shard = killed / "candidates" / "shard-00000.jsonl.partial"
    while time.time() < deadline and proc.poll() is None:
        if shard.exists() and shard.read_text().count("\n") >= 4:  # the first batch of candidates is on disk
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed; give it more work"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = shard.read_text().count("\n")
    assert done_before < 24
    subprocess.run(rlaifv_bin + ["feedback", "--config", str(cfg)], env=_env(), check=True, capture_output=True, timeout=300)
    assert _snapshot(killed) == _snapshot(full)


def test_resume_with_another_config_is_refused(tiny_sandbox_model, tmp_path, rlaifv_bin):
    run = tmp_path / "run"
    subprocess.run(rlaifv_bin + ["feedback", "--config", str(_cfg(tmp_path, tiny_sandbox_model, run))], env=_env(), check=True, capture_output=True, timeout=300)
    proc = subprocess.run(rlaifv_bin + ["feedback", "--config", str(_cfg(tmp_path, tiny_sandbox_model, run)), "--seed", "7"], env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "config" in proc.stdout


def test_missing_image_goes_to_rejects_or_errors(tiny_sandbox_model, tmp_path, rlaifv_bin):
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    from rlaifv.sandbox.render import render
    from rlaifv.sandbox.world import World

    render(World().scene(0)).save(img_dir / "a.png")
    (img_dir / "bad.png").write_bytes(b"not a png")
    rows = [Prompt("a", "Describe the image in detail.", image="imgs/a.png"), Prompt("missing", "Describe the image in detail.", image="imgs/nope.png"),
            Prompt("corrupt", "Describe the image in detail.", image="imgs/bad.png")]
    pfile = tmp_path / "prompts.jsonl"
    pfile.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in rows))
    base = ["feedback", "--prompts", str(pfile), "--policy", str(tiny_sandbox_model), "--labeler", str(tiny_sandbox_model), "--n", "2", "--max-new-tokens", "8"]
    proc = subprocess.run(rlaifv_bin + base + ["--out", str(tmp_path / "r1")], env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and ("missing" in proc.stdout or "corrupt" in proc.stdout)
    proc = subprocess.run(rlaifv_bin + base + ["--out", str(tmp_path / "r2"), "--on-error", "skip"], env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rejects = [json.loads(x) for x in (tmp_path / "r2" / "candidates" / "rejects.jsonl").read_text().splitlines()]
    assert {r["id"] for r in rejects} == {"missing", "corrupt"}
    assert len(list(read_records(tmp_path / "r2" / "candidates", Candidate))) == 2


def test_holistic_scoring_baseline(tiny_sandbox_model, tmp_path):
    """The ablation baseline: one yes/no question per whole answer, no divide/ask stages."""
    from rlaifv.config import load_config
    from rlaifv.stages.feedback import FeedbackConfig, feedback

    cfg = load_config(FeedbackConfig, _cfg(tmp_path, tiny_sandbox_model, tmp_path / "h", pairs={"scoring": "holistic"}))
    summary = feedback(cfg)
    run = tmp_path / "h"
    scores = list(read_records(run / "holistic_scores", ClaimScore))
    assert scores and all(s.claim_id.endswith("/holistic") for s in scores)
    assert "accurate" in scores[0].question.lower() or "describ" in scores[0].question.lower()
    assert not (run / "claims").exists()
    stats = json.loads((run / "pairs" / "stats.json").read_text())
    assert stats["scoring"] == "holistic" and summary["pairs"]["pairs_after_balance"] == stats["pairs_after_balance"]


def test_progress_file_torn_tail_is_cut(tmp_path):
    # A kill mid-append leaves '"b' without a newline; reopening drops it and appends cleanly.
    from rlaifv.runner import _Progress, read_progress

    path = tmp_path / "progress.jsonl"
    path.write_text('"a"\n"b')
    prog = _Progress(path)
    assert prog.done == {"a"}
    prog.mark(["c"])
    prog.close()
    assert read_progress(path) == ["a", "c"] and path.read_text() == '"a"\n"c"\n'

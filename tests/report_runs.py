"""Run folders the report tests look at (tests/test_report.py, tests/test_report_browser.py).

``sandbox_run``: a real, small ``rlaifv feedback`` run made through the CLI as a user makes it:
4 held-out sandbox scenes + 1 prompt whose image is missing (set aside at sampling), the shipped
sandbox policy (3 answers each, 36 new tokens: some answers are truncated), the sandbox labeler
with the ``describe_then_match`` stand-in (mixed verdicts, so pairs), at most 1 pair per prompt
(so the cap drops some). About 10 s of CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

from rlaifv.records import Candidate, ClaimScore, PreferencePair, Prompt
from rlaifv.store import read_records


def env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", COLUMNS="200")


def sandbox_run(folder: Path, rlaifv_bin: list[str]) -> Path:
    """The run described in the module docstring, in ``folder/run``."""
    from rlaifv.sandbox.prompts import write_sandbox_prompts

    prompts = write_sandbox_prompts(folder / "prompts", 4)
    first = json.loads(prompts.read_text().splitlines()[0])
    with prompts.open("a") as f:
        f.write(json.dumps({**first, "prompt_id": "bad-image", "image": "images/missing.png"}) + "\n")
    cfg = folder / "feedback.yaml"
    cfg.write_text("pairs: {max_pairs_per_prompt: 1}\n")
    run = folder / "run"
    subprocess.run(rlaifv_bin + ["feedback", "--config", str(cfg), "--prompts", str(prompts), "--policy", "sandbox:policy",
                                 "--labeler", "sandbox:labeler", "--conquer-mode", "describe_then_match", "--n", "3",
                                 "--max-new-tokens", "36", "--on-error", "skip", "--out", str(run)],
                   env=env(), check=True, capture_output=True, timeout=600)
    return run


def shared_sandbox_run(tmp_path_factory, rlaifv_bin: list[str]) -> Path:
    """:func:`sandbox_run` made once per test session, shared by the report test files (and by
    the xdist workers of ``make test``: they share the session's base folder, a file lock
    makes the first one build it)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = base.parent if base.name.startswith("popen-gw") else base  # under xdist: the session's folder
    folder = root / "report-sandbox-run"
    with FileLock(str(root / "report-sandbox-run.lock")):
        if not (folder / "run" / "feedback.json").exists():
            shutil.rmtree(folder, ignore_errors=True)  # a build cut short
            folder.mkdir()
            sandbox_run(folder, rlaifv_bin)
    return folder / "run"


def expected(run: Path) -> dict:
    """What the report must show, straight from the stored records (no report code involved)."""
    prompts = [p.prompt_id for p in read_records(run / "prompts" / "prompts.jsonl", Prompt)]
    scores = {s.claim_id: s for s in read_records(run / "scores", ClaimScore)}
    cands = list(read_records(run / "candidates", Candidate))
    pairs = list(read_records(run / "pairs", PreferencePair))
    rejected_by_prompt: dict[str, int] = defaultdict(int)
    claims_by_prompt: dict[str, int] = defaultdict(int)
    for cid, s in scores.items():
        pid = cid.rsplit("/", 1)[0].rsplit("#", 1)[0]
        claims_by_prompt[pid] += 1
        rejected_by_prompt[pid] += s.p_no >= s.p_yes
    return {
        "prompts": prompts,
        "verdict": {cid: "rejected" if s.p_no >= s.p_yes else "accepted" for cid, s in scores.items()},
        "scores": scores,
        "truncated_prompts": sorted({c.prompt_id for c in cands if c.decoding.get("truncated")}),
        "pair_prompts": sorted({p.prompt_id for p in pairs}),
        "pairs": {(p.chosen_id, p.rejected_id) for p in pairs},
        "with_rejected": sorted(p for p in prompts if rejected_by_prompt[p] > 0),
        "all_accepted": sorted(p for p in prompts if claims_by_prompt[p] > 0 and rejected_by_prompt[p] == 0),
    }

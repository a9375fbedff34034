"""Kill -9 campaign: SIGKILL each stage at random points, rerun it, compare with an uninterrupted run.

For each stage (``feedback`` with ``--conquer-mode direct`` and with ``describe_then_match``,
``train``, ``best-of-n``) the script makes one uninterrupted reference run, then N runs that are
each killed once or twice (``SIGKILL`` at a random moment of the command's wall time) and then
rerun to the end with the same command. A run counts as identical when every record it wrote is
byte-identical to the reference (stage shards concatenated in order; train: every checkpoint
file and ``log.jsonl``; rejects compared as sets of lines).

The inputs are what a real user has: prompts with questions of different lengths (so prompts
of several lengths share a batch) and ``--on-error skip`` with one bad record (a prompt whose
image is missing; for train, a pair with a missing field). Models: the shipped sandbox:policy
and sandbox:labeler; budgets are small.

    python bench/kill_test.py --n 20                     # all four stages (make killtest)
    python bench/kill_test.py --n 3 --stages train       # a quick look at one stage

Prints a table (stage, runs, kills, identical, differing) and writes ``WORK/kill_test.json``
(per run: kill times, and which outputs differed). Exit code 1 if any run differed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

STAGES = ("feedback-direct", "feedback-dtm", "train", "best-of-n")
QUESTIONS = (  # different lengths: a batch of prompts needs left padding
    "Describe the image in detail.",
    "What is in the picture?",
    "How many objects are there in the image? Describe each of them with its size, its colour and where it is in the grid.",
    "Describe the image.",
    "Look at the picture carefully and describe every shape you can see, from the top left to the bottom right.",
)
FEEDBACK_DIRS = ("candidates", "claims", "questions", "scores", "pairs")


@dataclass
class Setup:
    """Where the campaign works and its budgets."""

    work: Path
    n_prompts: int
    cands: int
    max_new_tokens: int
    rlaifv: list[str]
    startup: float = 0.0  # seconds the CLI takes to start (imports): kills land after it
    refs: dict[str, Path] = field(default_factory=dict)
    ref_seconds: dict[str, float] = field(default_factory=dict)


def write_prompts(s: Setup) -> Path:
    """Sandbox scenes with varied questions, plus one prompt whose image is missing (a reject)."""
    from rlaifv.sandbox.prompts import write_sandbox_prompts

    path = write_sandbox_prompts(s.work / "prompts", s.n_prompts)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for i, row in enumerate(rows):
        row["question"] = QUESTIONS[i % len(QUESTIONS)]
    bad = {**rows[0], "prompt_id": "missing-image", "image": "images/no-such-scene.png"}
    rows.insert(len(rows) // 2, bad)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def train_pairs(s: Setup) -> Path:
    """The describe_then_match reference run's pairs, plus one pair without its chosen answer."""
    src = ref(s, "feedback-dtm") / "pairs"
    lines = [ln for p in sorted(src.glob("shard-*.jsonl")) for ln in p.read_text().splitlines() if ln.strip()]
    if not lines:
        raise SystemExit(f"{src}: the reference feedback run made no pairs; raise --cands or --prompts")
    bad = {k: v for k, v in json.loads(lines[0]).items() if k != "chosen"} | {"chosen_id": "bad#98", "rejected_id": "bad#99"}
    lines.insert(len(lines) // 2, json.dumps(bad))
    path = s.work / "train_pairs.jsonl"
    path.write_text("".join(ln + "\n" for ln in lines))
    return path


def command(s: Setup, stage: str, out: Path) -> list[str]:
    """The stage's command line (every run of a stage uses the same one, only --out differs)."""
    prompts = str(s.work / "prompts" / "prompts.jsonl")
    budget = ["--n", str(s.cands), "--max-new-tokens", str(s.max_new_tokens), "--on-error", "skip"]
    if stage.startswith("feedback"):
        mode = "direct" if stage == "feedback-direct" else "describe_then_match"
        return s.rlaifv + ["feedback", "--prompts", prompts, "--policy", "sandbox:policy", "--labeler", "sandbox:labeler",
                           "--conquer-mode", mode, "--out", str(out)] + budget
    if stage == "train":
        return s.rlaifv + ["train", "--pairs", str(s.work / "train_pairs.jsonl"), "--prompts", prompts, "--model", "sandbox:policy",
                           "--out", str(out), "--epochs", "4", "--batch-size", "1", "--lr", "5e-4", "--on-error", "skip"]
    aligned = sorted((ref(s, "train") / "checkpoints").glob("step-*"))[-1]
    return s.rlaifv + ["best-of-n", "--prompts", prompts, "--policy", "sandbox:policy", "--aligned", str(aligned),
                       "--reference", "sandbox:policy", "--out", str(out)] + budget


def _env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", COLUMNS="200")


def run_to_end(cmd: list[str], log: Path) -> tuple[int, float]:
    """Run a command uninterrupted; (exit code, seconds)."""
    t0 = time.time()
    with log.open("a") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env()).returncode
    return rc, time.time() - t0


def run_and_kill(cmd: list[str], log: Path, after: float) -> bool:
    """Start the command and SIGKILL it (its process group) ``after`` seconds later; False if it ended first."""
    with log.open("a") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
        try:
            proc.wait(timeout=after)
            return False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            f.write(f"\n--- SIGKILL after {after:.1f} s ---\n")
            return True


def ref(s: Setup, stage: str) -> Path:
    """The stage's uninterrupted reference run (made once; its inputs first)."""
    if stage not in s.refs:
        if stage == "train":
            train_pairs(s)
        out = s.work / stage / "reference"
        shutil.rmtree(out, ignore_errors=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        rc, secs = run_to_end(command(s, stage, out), s.work / stage / "reference.log")
        if rc != 0:
            raise SystemExit(f"{stage}: the reference run failed (exit {rc}); see {s.work / stage / 'reference.log'}")
        s.refs[stage], s.ref_seconds[stage] = out, secs
        print(f"{stage}: reference run {secs:.0f} s", flush=True)
    return s.refs[stage]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _records(folder: Path) -> dict[str, str]:
    """A stage folder's records (shards in order) and rejects (as a set of lines)."""
    shards = sorted(folder.glob("shard-*.jsonl*"))
    out = {f"{folder.name}/records": _sha(b"".join(p.read_bytes() for p in shards))}
    rejects = folder / "rejects.jsonl"
    if rejects.exists():
        out[f"{folder.name}/rejects"] = _sha("\n".join(sorted(rejects.read_text().splitlines())).encode())
    return out


def outputs(stage: str, run: Path) -> dict[str, str]:
    """Digest of everything a run must reproduce exactly (timings left out)."""
    digest: dict[str, str] = {}
    if stage.startswith("feedback"):
        for sub in FEEDBACK_DIRS:
            digest |= _records(run / sub)
        for name in ("stats.json", "scored_candidates.json"):
            if (run / "pairs" / name).exists():
                digest[f"pairs/{name}"] = _sha((run / "pairs" / name).read_bytes())
    elif stage == "train":
        for p in sorted((run / "checkpoints").rglob("*")):
            if p.is_file():
                digest[str(p.relative_to(run))] = _sha(p.read_bytes())
        digest["log.jsonl"] = _sha((run / "log.jsonl").read_bytes()) if (run / "log.jsonl").exists() else "missing"
        if (run / "rejects.jsonl").exists():
            digest["rejects"] = _sha("\n".join(sorted((run / "rejects.jsonl").read_text().splitlines())).encode())
    else:
        digest |= _records(run / "results")
    return digest


def killed_run(s: Setup, stage: str, i: int, rng: random.Random) -> dict:
    """One run: killed once or twice at random moments, then rerun to the end and compared."""
    out = s.work / stage / f"run-{i:03d}"
    shutil.rmtree(out, ignore_errors=True)
    log = s.work / stage / f"run-{i:03d}.log"
    log.unlink(missing_ok=True)
    cmd = command(s, stage, out)
    kills: list[float] = []
    for attempt in range(3):  # the machine's load varies: a run that ended before its kill starts over, faster guessed
        for k in range(2 if rng.random() < 0.3 else 1):
            total = s.ref_seconds[stage]
            after = rng.uniform(min(s.startup, 0.5 * total), 0.95 * total)  # a kill during the imports tests nothing
            t0 = time.time()
            if run_and_kill(cmd, log, after):
                kills.append(round(after, 1))
            elif k == 0:  # a fresh run ended sooner than the reference: guess shorter from now on
                s.ref_seconds[stage] = min(s.ref_seconds[stage], time.time() - t0)
        if kills:
            break
        shutil.rmtree(out, ignore_errors=True)
    rc, _ = run_to_end(cmd, log)
    want, got = outputs(stage, ref(s, stage)), outputs(stage, out)
    differ = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
    if rc != 0:
        differ.insert(0, f"rerun exit code {rc}")
    return {"run": i, "kills_at_s": kills, "identical": not differ, "differ": differ}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20, help="killed runs per stage")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {', '.join(STAGES)}")
    ap.add_argument("--work", type=Path, default=Path("runs/killtest"))
    ap.add_argument("--prompts", type=int, default=5, help="good prompts (one bad one is added)")
    ap.add_argument("--cands", type=int, default=4, help="candidates per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    args = ap.parse_args(argv)
    stages = [x.strip() for x in args.stages.split(",") if x.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown or args.n < 1:
        ap.error(f"unknown stage(s) {unknown}; expected {STAGES}" if unknown else "--n must be >= 1")
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    exe = Path(sys.executable).parent / "rlaifv"
    s = Setup(args.work.resolve(), args.prompts, args.cands, args.max_new_tokens,
              [str(exe)] if exe.exists() else [sys.executable, "-m", "rlaifv.cli"])
    write_prompts(s)
    s.startup = run_to_end(s.rlaifv + ["sample", "--help"], s.work / "startup.log")[1]
    rng = random.Random(args.seed)
    report: dict[str, list[dict]] = {}
    for stage in stages:
        ref(s, stage)
        report[stage] = []
        for i in range(args.n):
            report[stage].append(killed_run(s, stage, i, rng))
            r = report[stage][-1]
            print(f"{stage} run {i}: killed at {r['kills_at_s']} s -> {'identical' if r['identical'] else 'DIFFERS: ' + ', '.join(r['differ'])}",
                  flush=True)
    (s.work / "kill_test.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                       "reference_seconds": s.ref_seconds, "runs": report}, indent=1))
    print("\n| stage | runs | kills | identical | differing |\n|---|---|---|---|---|")
    for stage, runs in report.items():
        same = sum(r["identical"] for r in runs)
        print(f"| {stage} | {len(runs)} | {sum(len(r['kills_at_s']) for r in runs)} | {same} | {len(runs) - same} |")
    return 0 if all(r["identical"] for runs in report.values() for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())

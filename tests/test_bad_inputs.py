"""Every case of the bad-input corpus (``tests/badinputs.py``) through the CLI, as a user runs it.

Promised outcomes (README, issue 11): a one-line error naming the record / key / file (exit 2,
no traceback); or with ``--on-error skip`` a ``rejects.jsonl`` entry naming the bad record while
every good record of the same input is processed, and the output says so; or, for inputs that
are merely unusual, a normal run. Cases that share one command (several bad lines of one
prompts file with skip) share one run; the runs of the selected cases start together, two at a
time, the slowest first.

Outside pytest: ``python tests/test_bad_inputs.py OUT [--model M]`` prints the corpus table.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from badinputs import CASES, GROUPS, Case, Group, argv_of, write_group


@dataclass
class Result:
    """What one CLI run of a group left: exit code, output (stdout + stderr) and its folder."""

    returncode: int
    output: str
    folder: Path
    seconds: float = 0.0


MEMORY_LIMIT = 8 << 30  # address-space cap of each run: a runaway input fails instead of starving the machine


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_group(group: Group, folder: Path, cli: list[str], model: Path, timeout: float = 900) -> Result:
    """Write the group's files and run its command there, as a user would (``cli`` = the rlaifv executable).
    The output goes to ``<group>/cli_output.txt`` too, for a look afterwards."""
    where = write_group(group, folder, model)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", COLUMNS="1000",
               OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore::DeprecationWarning")
    t0 = time.time()
    try:
        proc = subprocess.run(cli + argv_of(group, model), cwd=where, capture_output=True, text=True, env=env, timeout=timeout,
                              preexec_fn=_limit_memory, errors="replace")
    except subprocess.TimeoutExpired as e:
        return Result(-1, f"timed out after {timeout} s\n{e.stdout or ''}{e.stderr or ''}", where, time.time() - t0)
    (where / "cli_output.txt").write_text(f"$ rlaifv {' '.join(argv_of(group, model))}\n{proc.stdout}{proc.stderr}exit {proc.returncode}\n")
    return Result(proc.returncode, proc.stdout + proc.stderr, where, round(time.time() - t0, 1))


def run_groups(names: list[str], folder: Path, cli: list[str], model: Path, workers: int = 2) -> dict[str, Future]:
    """Start the named groups' runs (slowest first) on ``workers`` threads; futures of Results by group."""
    pool = ThreadPoolExecutor(max_workers=workers)
    order = sorted(dict.fromkeys(names), key=lambda n: -GROUPS[n].cost)
    futures = {n: pool.submit(run_group, GROUPS[n], folder, cli, model) for n in order}
    pool.shutdown(wait=False)
    return futures


_BAR = re.compile(r"[━╸╺]|\s\d+/\d+\s+\d+:\d\d:\d\d")


def message_lines(output: str) -> list[str]:
    """Non-blank output lines, rich progress-bar lines (drawn before the error) left out."""
    return [ln for ln in output.splitlines() if ln.strip() and not _BAR.search(ln)]


def rejects_of(folder: Path) -> list[dict]:
    """Every rejects.jsonl entry anywhere under a run folder."""
    out = []
    for path in sorted(Path(folder).rglob("rejects.jsonl")):
        out += [json.loads(ln) for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return out


def output_ids(folder: Path) -> set[str]:
    """prompt_id / id of every record in a stage's output folder (shards, or any *.jsonl but bookkeeping)."""
    ids: set[str] = set()
    if not folder.is_dir():
        return ids
    for path in sorted(folder.glob("*.jsonl")):
        if path.name in ("rejects.jsonl", "progress.jsonl"):
            continue
        for ln in path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(ln)
            except json.JSONDecodeError:
                continue
            ids.update(str(rec[k]) for k in ("prompt_id", "id") if isinstance(rec, dict) and k in rec)
    return ids


def _json_value(path: Path, dotted: str) -> Any:
    value: Any = json.loads(path.read_text())
    for part in dotted.split("."):
        value = value[part]
    return value


def _matches(patterns: tuple[str, ...], text: str) -> bool:
    return any(re.search(p, text, re.IGNORECASE) for p in patterns)


def _check_error(case: Case, res: Result) -> list[str]:
    lines = message_lines(res.output)
    problems = [] if res.returncode == 2 else [f"exit code {res.returncode}, expected 2"]
    if len(lines) != 1:
        problems.append(f"{len(lines)} output lines, expected exactly one")
    if not any(_matches(case.names, ln) for ln in lines[-1:]):
        problems.append(f"the error line does not name any of {list(case.names)}")
    return problems


def _check_processed(case: Case, group: Group, res: Result, rejected: set[str]) -> list[str]:
    want = set(group.good) | ({case.record} if case.record else set())
    done = output_ids(res.folder / group.outputs) if group.outputs else set()
    problems = [f"good record {i!r} not processed" for i in sorted(want - done)]
    problems += [f"{i!r} was rejected" for i in sorted(want & rejected)] if case.expected == "ok" else []
    for file, key, value in case.checks:
        try:
            got = _json_value(res.folder / file, key)
        except (OSError, KeyError, TypeError, ValueError) as e:
            problems.append(f"{file} {key}: cannot read ({type(e).__name__}: {e})")
            continue
        if got != value and not (isinstance(value, float) and isinstance(got, (int, float)) and abs(got - value) <= 1e-12 * abs(value)):
            problems.append(f"{file} {key} = {got!r}, expected {value!r}")
    return problems


def check(case: Case, res: Result) -> list[str]:
    """What differs from the promised outcome (empty: as promised)."""
    group = GROUPS[case.group]
    problems = ["a Traceback in the output"] if "Traceback" in res.output else []
    if case.expected == "error":
        return problems + _check_error(case, res)
    if res.returncode != 0:
        problems.append(f"exit code {res.returncode}, expected 0: {(message_lines(res.output) or [''])[-1][:300]}")
    entries = rejects_of(res.folder)
    if case.expected == "reject":
        if not any(_matches(case.names, json.dumps(e, ensure_ascii=False)) for e in entries):
            problems.append(f"no rejects.jsonl entry names any of {list(case.names)} ({len(entries)} entries)")
        if not re.search(r"reject", res.output, re.IGNORECASE):
            problems.append("the output does not say that records were rejected")
    return problems + _check_processed(case, group, res, {str(e.get("id")) for e in entries})


def actual(res: Result) -> str:
    """A one-word summary of a run for the table."""
    if "Traceback" in res.output:
        return "traceback"
    return {0: "exit 0", 2: "error"}.get(res.returncode, f"exit {res.returncode}")


@pytest.fixture(scope="module")
def corpus_runs(request, tmp_path_factory, tiny_sandbox_model, rlaifv_bin) -> dict[str, Future]:
    """Start the runs of every selected case of this module at once (two at a time); futures by group."""
    selected = [item.callspec.params["name"] for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec") and "name" in item.callspec.params]
    groups = [c.group for c in CASES if c.name in set(selected)]
    return run_groups(groups, tmp_path_factory.mktemp("badinputs"), list(rlaifv_bin), Path(tiny_sandbox_model))


def test_corpus_covers_the_issue():
    """At least 45 cases, every promised outcome present, every run shared by cases of one command."""
    assert len(CASES) >= 45
    assert {c.expected for c in CASES} == {"error", "reject", "ok"}
    assert {c.group for c in CASES} == set(GROUPS)
    for case in CASES:
        group = GROUPS[case.group]
        if case.expected == "reject":
            assert "skip" in group.argv and (group.good or case.checks), case.name
        assert all(re.compile(p) for p in case.names)


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_bad_input(name: str, corpus_runs: dict[str, Future]):
    case = next(c for c in CASES if c.name == name)
    res = corpus_runs[case.group].result()
    problems = check(case, res)
    cmd = " ".join(argv_of(GROUPS[case.group], "MODEL"))
    assert not problems, (f"{case.name} ({case.kind}; expected {case.expected}): {'; '.join(problems)}\n"
                          f"$ rlaifv {cmd}  (in {res.folder})\n{res.output[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    """Run every case (model: default the shipped sandbox policy) and print expected vs actual per case."""
    import argparse

    ap = argparse.ArgumentParser(description="Run the bad-input corpus through the CLI and print expected vs actual.")
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", type=Path, default=Path(__file__).resolve().parents[1] / "src/rlaifv/assets/sandbox/policy")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    cli = [str(Path(sys.executable).parent / "rlaifv")]
    futures = run_groups([c.group for c in CASES], args.out, cli, args.model, args.workers)
    failed = 0
    print("| case | kind | expected | actual | as promised | problems |\n|---|---|---|---|---|---|")
    for case in CASES:
        res = futures[case.group].result()
        problems = check(case, res)
        failed += bool(problems)
        said = "; ".join(problems).replace("|", "\\|")
        print(f"| {case.name} | {case.kind} | {case.expected} | {actual(res)} | {'yes' if not problems else 'NO'} | {said} |")
    print(f"\n{len(CASES) - failed} of {len(CASES)} cases as promised")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

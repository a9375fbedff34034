"""Checkpoint selection: which of an iteration's checkpoints becomes the next policy.

The paper selects the best 1/4-epoch checkpoint on Object HalBench + MMHal-Bench
(rlaif-v-method.md, Sec. 2, "Iteration"). Here:

* ``kind='sandbox'`` (default): sampled CHAIR_i on ``n_scenes`` held-out *val* scenes (exact
  ground truth), among checkpoints whose object recall is at least the run's starting policy's
  recall minus ``recall_tolerance`` (hallucination must not be bought with silence);
  if none qualifies, the one with the highest recall.
* ``kind='command'``: a user command per checkpoint (``{checkpoint}`` is replaced by its folder)
  whose last stdout line is a number; lower is better unless ``maximize``. This is how real
  evaluations (Object HalBench, MMHal, ...) plug in.
* ``kind='last'``: the last checkpoint.

Every evaluated checkpoint's numbers are kept in ``selection.json``, which a rerun reuses.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..eval.report import write_json


@dataclass
class SelectionConfig:
    """How ``rlaifv iterate`` picks the next policy among an iteration's checkpoints."""

    kind: str = "sandbox"  # sandbox | command | last
    n_scenes: int = 100  # sandbox: val scenes per checkpoint
    recall_tolerance: float = 0.03  # sandbox: recall may drop at most this much below the run's starting policy's
    command: str = ""  # command: shell command with {checkpoint}; prints the score on its last stdout line
    maximize: bool = False  # command: higher score is better
    seed: int = 0


class SelectionError(RuntimeError):
    """A selection command failed or printed no number."""


def sandbox_metrics(model_path: str, n_scenes: int, seed: int, device: str = "cpu", dtype: str = "float32",
                    progress: Callable[[int, int, str], None] | None = None) -> dict[str, float]:
    """Sampled CHAIR_i / CHAIR_s / recall / length on ``n_scenes`` val scenes."""
    from ..models.load import load_vlm
    from ..sandbox.evaluate import SandboxEvalConfig, evaluate_sandbox

    model, processor = load_vlm(model_path, device, dtype)
    cfg = SandboxEvalConfig(n_scenes=n_scenes, split="val", seed=seed, pope=False, claims=False, greedy=False)
    s = evaluate_sandbox(model, processor, cfg, progress=progress)["describe"]["sampled"]
    return {"chair_i": s["chair_i"], "chair_s": s["chair_s"], "recall": s["recall"], "avg_length": s["avg_length"]}


def command_score(command: str, checkpoint: str) -> float:
    """Run the user's command for one checkpoint; its last stdout line must be a number."""
    cmd = command.replace("{checkpoint}", shlex.quote(checkpoint))
    res = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    if res.returncode != 0:
        raise SelectionError(f"selection command failed ({res.returncode}) for {checkpoint}: {res.stderr.strip()[-500:]}")
    lines = [line for line in res.stdout.strip().splitlines() if line.strip()]
    try:
        return float(lines[-1])
    except (IndexError, ValueError) as e:
        raise SelectionError(f"selection command printed no number on its last line for {checkpoint}: {res.stdout[-300:]!r}") from e


def select_checkpoint(checkpoints: list[str], start: dict[str, float] | None, cfg: SelectionConfig, record: Path,
                      measure: Callable[[str], dict[str, float]] | None = None,
                      progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """Evaluate (or reuse from ``record``) every checkpoint and return the choice with all scores.

    ``start`` is the starting policy's sandbox metrics (for the recall floor); ``measure``
    overrides how sandbox metrics are computed (tests); ``progress(done, total, name)`` is called
    per checkpoint.
    """
    if not checkpoints:
        raise SelectionError("no checkpoints to select from")
    if cfg.kind == "last":
        return {"selected": checkpoints[-1], "kind": "last", "scores": {}}
    seen: dict[str, Any] = json.loads(record.read_text())["scores"] if record.exists() else {}
    for i, ck in enumerate(checkpoints):
        if progress:
            progress(i, len(checkpoints), Path(ck).name)
        if ck not in seen:
            if cfg.kind == "sandbox":
                seen[ck] = (measure or (lambda c: sandbox_metrics(c, cfg.n_scenes, cfg.seed)))(ck)
            elif cfg.kind == "command":
                seen[ck] = {"score": command_score(cfg.command, ck)}
            else:
                raise ValueError(f"selection kind must be sandbox | command | last, got {cfg.kind!r}")
            write_json(record, {"kind": cfg.kind, "scores": seen})  # resumable per checkpoint
    if progress:
        progress(len(checkpoints), len(checkpoints), "")
    scores = {ck: seen[ck] for ck in checkpoints}
    if cfg.kind == "command":
        pick = (max if cfg.maximize else min)(checkpoints, key=lambda c: scores[c]["score"])
    else:
        floor = (start or {}).get("recall", 0.0) - cfg.recall_tolerance
        ok = [c for c in checkpoints if scores[c]["recall"] >= floor]
        pick = min(ok, key=lambda c: scores[c]["chair_i"]) if ok else max(checkpoints, key=lambda c: scores[c]["recall"])
    result = {"selected": pick, "kind": cfg.kind, "scores": scores, "start": start}
    write_json(record, result)
    return result

"""Checkpoint selection: which of an iteration's checkpoints becomes the next policy.

The paper selects the best 1/4-epoch checkpoint on Object HalBench + MMHal-Bench
(rlaif-v-method.md, Sec. 2, "Iteration"). Here:

* ``kind='sandbox'`` (default): sampled CHAIR_i on ``n_scenes`` held-out *val* scenes (exact
  ground truth), among checkpoints whose object recall is at least the run's starting policy's
  recall minus ``recall_tolerance`` (hallucination must not be bought with silence) and, with
  ``pope_tolerance``, whose mean POPE F1 is within that of the starting policy's (yes/no
  answering must survive DPO on descriptions); if none qualifies, the one with the highest
  recall, or with ``keep_current`` the current policy (the iteration then changes nothing).
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
    pope_tolerance: float | None = None  # sandbox: if set, mean POPE F1 may drop at most this much too (a helpfulness guard)
    keep_current: bool = False  # no checkpoint passes the guards: keep the current policy (else: the highest recall)
    command: str = ""  # command: shell command with {checkpoint}; prints the score on its last stdout line
    maximize: bool = False  # command: higher score is better
    seed: int = 0


class SelectionError(RuntimeError):
    """A selection command failed or printed no number."""


def sandbox_metrics(model_path: str, n_scenes: int, seed: int, device: str = "cpu", dtype: str = "float32",
                    progress: Callable[[int, int, str], None] | None = None, pope: bool = False) -> dict[str, float]:
    """Sampled CHAIR_i / CHAIR_s / recall / length (and mean POPE F1) on ``n_scenes`` val scenes."""
    from ..models.load import load_vlm
    from ..sandbox.evaluate import SandboxEvalConfig, evaluate_sandbox

    model, processor = load_vlm(model_path, device, dtype)
    cfg = SandboxEvalConfig(n_scenes=n_scenes, split="val", seed=seed, pope=pope, claims=False, greedy=False)
    res = evaluate_sandbox(model, processor, cfg, progress=progress)
    s = res["describe"]["sampled"]
    out = {"chair_i": s["chair_i"], "chair_s": s["chair_s"], "recall": s["recall"], "avg_length": s["avg_length"]}
    if pope:
        out["pope_f1"] = sum(v["f1"] for v in res["pope"].values()) / len(res["pope"])
    return out


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


def _passes(m: dict[str, float], start: dict[str, float], cfg: SelectionConfig) -> bool:
    """The sandbox guards: recall (and, if set, POPE F1) within tolerance of the run's start."""
    if m["recall"] < start.get("recall", 0.0) - cfg.recall_tolerance:
        return False
    if cfg.pope_tolerance is not None:
        if "pope_f1" not in m or "pope_f1" not in start:
            raise SelectionError("pope_tolerance needs POPE F1 of the checkpoint and the starting policy")
        return m["pope_f1"] >= start["pope_f1"] - cfg.pope_tolerance
    return True


def select_checkpoint(checkpoints: list[str], start: dict[str, float] | None, cfg: SelectionConfig, record: Path,
                      measure: Callable[[str], dict[str, float]] | None = None,
                      progress: Callable[[int, int, str], None] | None = None, current: str | None = None) -> dict[str, Any]:
    """Evaluate (or reuse from ``record``) every checkpoint and return the choice with all scores.

    ``current`` is the iteration's starting policy (kept with ``keep_current`` when no checkpoint
    qualifies). ``start`` is the run's starting policy's sandbox metrics (the guards); ``measure``
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
                seen[ck] = (measure or (lambda c: sandbox_metrics(c, cfg.n_scenes, cfg.seed, pope=cfg.pope_tolerance is not None)))(ck)
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
        ok = [c for c in checkpoints if _passes(scores[c], start or {}, cfg)]
        if ok:
            pick = min(ok, key=lambda c: scores[c]["chair_i"])
        elif cfg.keep_current and current is not None:
            pick = current
        else:
            pick = max(checkpoints, key=lambda c: scores[c]["recall"])
    result = {"selected": pick, "kind": cfg.kind, "scores": scores, "start": start, "kept_current": pick == current}
    write_json(record, result)
    return result

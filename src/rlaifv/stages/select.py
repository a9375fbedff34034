"""Checkpoint selection: which of an iteration's checkpoints becomes the next policy.

The paper selects the best 1/4-epoch checkpoint on Object HalBench + MMHal-Bench
(rlaif-v-method.md, Sec. 2, "Iteration"). Here (``kind``; ``""``, the default, means
``labeler`` on a user's prompts and ``sandbox`` on a sandbox run, decided by ``iterate``):

* ``kind='labeler'``: no ground truth needed. Each checkpoint and the current policy answer
  ``holdout`` held-out prompts of the user's own (never used for pairs; ``answers_per_prompt``
  sampled answers each, the same seeds for every model), and the method's own divide / ask /
  conquer (``direct`` mode, the run's labeler) judges the claims: the **hallucination rate** is
  the share of rejected claims. The checkpoint with the lowest rate wins if it is lower than the
  current policy's and it still states at least ``min_claims_ratio`` of the current policy's
  claims per answer (hallucination must not be bought with silence); otherwise the current
  policy is kept. Every model's records stay in ``<record stem>/<model>/`` (candidates, claims,
  questions, scores).
* ``kind='sandbox'``: sampled CHAIR_i on ``n_scenes`` held-out *val* scenes (exact ground
  truth; the ``"sandbox"`` evaluator of ``stages/extensions.py``, which the sandbox registers),
  among checkpoints whose object recall is at least the run's starting policy's recall minus
  ``recall_tolerance`` and, with ``pope_tolerance``, whose mean POPE F1 is within that of the
  starting policy's; if none qualifies, the one with the highest recall, or with
  ``keep_current`` the current policy (the iteration then changes nothing).
* ``kind='command'``: a user command per checkpoint (``{checkpoint}`` is replaced by its folder)
  whose last stdout line is a number; lower is better unless ``maximize``. This is how real
  evaluations (Object HalBench, MMHal, ...) plug in. Each run's output is kept in
  ``<record stem>/<checkpoint>.command.log``.
* ``kind='last'``: the last checkpoint.

Every evaluated model's numbers are kept in the record (``selection.json``), which a rerun reuses.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import ConfigError, check_choice
from ..eval.report import write_json
from ..records import Candidate, Claim, ClaimScore, PolarQuestion, Prompt

KINDS = ("", "labeler", "sandbox", "command", "last")


@dataclass
class SelectionConfig:
    """How ``rlaifv iterate`` picks the next policy among an iteration's checkpoints."""

    kind: str = ""  # labeler | sandbox | command | last; "": labeler on your own prompts, sandbox on a sandbox run
    holdout: int = 50  # labeler: prompts held out of the feedback (never paired) on which every model is judged
    holdout_seed: int = 0  # labeler: which prompts are held out (a seeded draw, independent of the file's order)
    answers_per_prompt: int = 2  # labeler: sampled answers per held-out prompt and model (same seeds for every model)
    min_claims_ratio: float = 0.8  # labeler: a checkpoint must state >= this share of the current policy's claims per answer
    n_scenes: int = 100  # sandbox: val scenes per checkpoint
    recall_tolerance: float = 0.03  # sandbox: recall may drop at most this much below the run's starting policy's
    pope_tolerance: float | None = None  # sandbox: if set, mean POPE F1 may drop at most this much too (a helpfulness guard)
    keep_current: bool = False  # sandbox: no checkpoint passes the guards: keep the current policy (else: the highest recall)
    command: str = ""  # command: shell command with {checkpoint}; prints the score on its last stdout line
    maximize: bool = False  # command: higher score is better
    seed: int = 0  # sampling seed of the evaluation answers (labeler, sandbox)

    def __post_init__(self) -> None:
        check_choice("selection.kind", self.kind, KINDS)
        for name in ("holdout", "answers_per_prompt"):
            if getattr(self, name) < 1:
                raise ConfigError(f"selection.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.min_claims_ratio <= 1.0:
            raise ConfigError(f"selection.min_claims_ratio must be in [0, 1], got {self.min_claims_ratio}")
        if self.kind == "command" and not self.command.strip():
            raise ConfigError("selection kind 'command' needs selection.command: a shell command with {checkpoint} that prints a score")


class SelectionError(RuntimeError):
    """A selection command failed or printed no number."""


def command_score(command: str, checkpoint: str, log: Path | None = None) -> float:
    """Run the user's command for one checkpoint; its last stdout line must be a number.

    ``log``: the command line, exit code, stdout and stderr are written there (also on failure).
    """
    cmd = command.replace("{checkpoint}", shlex.quote(checkpoint))
    res = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"$ {cmd}\n# exit code {res.returncode}\n# stdout\n{res.stdout}\n# stderr\n{res.stderr}")
    where = f" (output in {log})" if log is not None else ""
    if res.returncode != 0:
        raise SelectionError(f"selection command failed ({res.returncode}) for {checkpoint}{where}: {res.stderr.strip()[-500:]}")
    lines = [line for line in res.stdout.strip().splitlines() if line.strip()]
    try:
        return float(lines[-1])
    except (IndexError, ValueError) as e:
        raise SelectionError(f"selection command printed no number on its last line for {checkpoint}{where}: {res.stdout[-300:]!r}") from e


# ----------------------------------------------------------------------------- labeler-judged hallucination rate


def hallucination_metrics(candidates: Sequence[Candidate], claims: Sequence[Claim], scores: Sequence[ClaimScore]) -> dict[str, Any]:
    """The labeler-judged numbers of one model's answers: share of rejected claims and how much was said.

    ``hallucination_rate`` is None when no claim was judged. Answers without claims (empty, or
    set aside by divide) count as answers, so saying nothing lowers ``claims_per_answer``.
    """
    accepted = {s.claim_id: s.accepted for s in scores}
    judged = [c for c in claims if c.id in accepted]
    rejected = sum(not accepted[c.id] for c in judged)
    per_answer = Counter(c.candidate_id for c in judged)
    n = len(candidates)
    return {
        "hallucination_rate": rejected / len(judged) if judged else None,
        "claims": len(judged),
        "rejected_claims": rejected,
        "unjudged_claims": len(claims) - len(judged),
        "answers": n,
        "claims_per_answer": len(judged) / n if n else 0.0,
        "answers_without_claims": sum(per_answer[c.id] == 0 for c in candidates),
        "avg_words": sum(len(c.text.split()) for c in candidates) / n if n else 0.0,
    }


def labeler_metrics(model: str, prompts: list[Prompt], prompts_path: Path, folder: Path, feedback_cfg: Any, labeler: str,
                    cfg: SelectionConfig) -> dict[str, Any]:
    """Sample ``model``'s answers to the held-out prompts and judge them with ``labeler`` (direct mode).

    The stages of ``feedback_cfg`` (a FeedbackConfig: sampling settings, divide, ask, conquer)
    run into ``folder`` (resumable, inspectable); bad inputs are skipped and counted
    (``skipped``), never fatal: a checkpoint that writes empty answers must lose, not crash the run.
    """
    from .feedback import read_store, rejected_counts, run_ask, run_conquer, run_divide, run_sample

    sample_cfg = replace(feedback_cfg.sample, model=model, n=cfg.answers_per_prompt, seed=cfg.seed)
    run_sample(sample_cfg, prompts, prompts_path, folder / "candidates", "skip")
    cands = read_store(folder / "candidates", Candidate)
    run_divide(feedback_cfg.divide, prompts, cands, folder / "claims", "skip")
    claims = read_store(folder / "claims", Claim)
    run_ask(feedback_cfg.ask, claims, folder / "questions", "skip")
    questions = read_store(folder / "questions", PolarQuestion)
    run_conquer(replace(feedback_cfg.conquer, model=labeler, mode="direct"), prompts, prompts_path, questions, folder / "scores", "skip")
    out = hallucination_metrics(cands, claims, read_store(folder / "scores", ClaimScore))
    out["skipped"] = sum(rejected_counts(folder).values())
    return out


def _better_than_current(checkpoints: Sequence[str], scores: dict[str, dict], current: dict, cfg: SelectionConfig) -> list[str]:
    """Checkpoints whose hallucination rate is below the current policy's without saying much less."""
    base = current["hallucination_rate"]
    floor = cfg.min_claims_ratio * current["claims_per_answer"]
    return [c for c in checkpoints if scores[c]["hallucination_rate"] is not None
            and (base is None or scores[c]["hallucination_rate"] < base) and scores[c]["claims_per_answer"] >= floor]


# ----------------------------------------------------------------------------- the choice


def _passes(m: dict[str, float], start: dict[str, float], cfg: SelectionConfig) -> bool:
    """The sandbox guards: recall (and, if set, POPE F1) within tolerance of the run's start."""
    if m["recall"] < start.get("recall", 0.0) - cfg.recall_tolerance:
        return False
    if cfg.pope_tolerance is not None:
        if "pope_f1" not in m or "pope_f1" not in start:
            raise SelectionError("pope_tolerance needs POPE F1 of the checkpoint and the starting policy")
        return m["pope_f1"] >= start["pope_f1"] - cfg.pope_tolerance
    return True


def _sandbox_measure(cfg: SelectionConfig) -> Callable[[str], dict[str, float]]:
    from .extensions import evaluator

    ev = evaluator("sandbox", "selection kind 'sandbox'")
    return lambda c: ev.selection_metrics(c, cfg.n_scenes, cfg.seed, None, None, cfg.pope_tolerance is not None)


def select_checkpoint(checkpoints: list[str], start: dict[str, float] | None, cfg: SelectionConfig, record: Path,
                      measure: Callable[[str], dict[str, Any]] | None = None,
                      progress: Callable[[int, int, str], None] | None = None, current: str | None = None,
                      extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate (or reuse from ``record``) every checkpoint and return the choice with all scores.

    ``current`` is the iteration's starting policy (kept with ``keep_current`` when no checkpoint
    qualifies; the ``labeler`` kind measures it too and keeps it when no checkpoint is better).
    ``start`` is the run's starting policy's sandbox metrics (the guards); ``measure`` says how a
    model is measured (required for ``labeler``; the sandbox evaluator by default for
    ``sandbox``); ``progress(done, total, name)`` is called per model; ``extra`` is stored in
    the record as it is (e.g. the labeler and the held-out prompts).
    """
    if not checkpoints:
        raise SelectionError("no checkpoints to select from")
    if cfg.kind == "last":
        return {"selected": checkpoints[-1], "kind": "last", "scores": {}}
    if cfg.kind == "labeler" and (measure is None or current is None):
        raise ValueError("selection kind 'labeler' needs `measure` and `current` (rlaifv iterate provides them)")
    if cfg.kind not in ("labeler", "sandbox", "command"):
        raise ValueError(f"selection kind must be labeler | sandbox | command | last, got {cfg.kind!r}")
    seen = _measure_all(checkpoints, cfg, record, measure, progress, current)
    scores = {ck: seen[ck] for ck in checkpoints}
    result: dict[str, Any] = {"kind": cfg.kind}
    if cfg.kind == "command":
        pick = (max if cfg.maximize else min)(checkpoints, key=lambda c: scores[c]["score"])
    elif cfg.kind == "labeler":
        better = _better_than_current(checkpoints, scores, seen[current], cfg)
        pick = min(better, key=lambda c: scores[c]["hallucination_rate"]) if better else current
        result["current"] = {"policy": current, **seen[current]}
    else:
        ok = [c for c in checkpoints if _passes(scores[c], start or {}, cfg)]
        if ok:
            pick = min(ok, key=lambda c: scores[c]["chair_i"])
        elif cfg.keep_current and current is not None:
            pick = current
        else:
            pick = max(checkpoints, key=lambda c: scores[c]["recall"])
    result = {"selected": pick, **result, "scores": scores, "start": start, "kept_current": pick == current, **(extra or {})}
    write_json(record, result)
    return result


def _measure_all(checkpoints: list[str], cfg: SelectionConfig, record: Path, measure, progress, current: str | None) -> dict[str, Any]:
    """model -> its numbers: the record's, else measured now (the record is rewritten after each, so a kill keeps them)."""
    old = json.loads(record.read_text()) if record.exists() else {}
    seen: dict[str, Any] = dict(old.get("scores", {}))
    if cfg.kind == "labeler" and "current" in old:
        seen[current] = {k: v for k, v in old["current"].items() if k != "policy"}
    models = ([current] if cfg.kind == "labeler" else []) + list(checkpoints)
    for i, ck in enumerate(models):
        if progress:
            progress(i, len(models), Path(ck).name)
        if ck in seen:
            continue
        if cfg.kind == "command":
            seen[ck] = {"score": command_score(cfg.command, ck, record.parent / record.stem / f"{Path(ck).name}.command.log")}
        else:
            seen[ck] = (measure or _sandbox_measure(cfg))(ck)
        state = {"kind": cfg.kind, "scores": {c: seen[c] for c in checkpoints if c in seen}}
        if cfg.kind == "labeler" and current in seen:
            state["current"] = {"policy": current, **seen[current]}
        write_json(record, state)  # resumable per model
    if progress:
        progress(len(models), len(models), "")
    return seen

"""Running ``divide`` / ``ask`` as stages: one LLM per stage, raw replies, logs, counts, a threshold.

What a user of the LLM backends can check (files in the stage folder):

* ``llm_raw.jsonl``: one JSON line per input with the LLM's raw reply and what became of it
  (claims parsed / dropped as unsupported, the question used, the fallback reason or null);
  ``llm_raw.rank-{r}.jsonl`` per process when several run. A rerun after a kill may repeat an
  input's line: the last line of an id wins.
* ``stage.log``: a line when the LLM is loaded and one per batch (items, seconds, fallbacks so
  far), written as the stage goes, not at its end.
* ``summary.json``: the stage's counts: inputs, outputs, answers that yielded 0 claims (ids),
  LLM fallbacks by reason, unsupported claims dropped; also copied into ``feedback.json``.

The LLM is built once per stage, on the first batch that needs it (a stage with nothing left
to do loads nothing). When more than ``max_fallback_rate`` of the inputs fall back, the stage
fails with :class:`LLMFallbackError`: checked after each batch once :data:`EARLY_CHECK_ITEMS`
inputs were seen (so an unfit model stops early) and over the whole stage at its end. The
records written so far stay; ``max_fallback_rate`` is not part of the stage's manifest, so a
rerun with a higher threshold finishes without redoing them.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..config import ConfigError
from ..runner import PROGRESS_NAME, rank_and_world, read_progress
from .llm import ChatLM, EndpointConfig, LLMConfig, build_chat_lm

RAW_NAME, LOG_NAME, SUMMARY_NAME = "llm_raw.jsonl", "stage.log", "summary.json"
#: Inputs seen (in this run) before the fallback rate may stop a stage early.
EARLY_CHECK_ITEMS = 50
#: Ids listed per category in summary.json (the counts are always complete).
MAX_IDS = 200


class LLMFallbackError(ConfigError):
    """The stage's LLM replies were unusable too often (the model does not fit the task)."""


def check_rate(name: str, value: float) -> None:
    """ConfigError unless 0 <= value <= 1 (``name`` is the config key)."""
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be between 0 and 1, got {value}")


def manifest_config(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """The stage config as its manifest stores it: without ``max_fallback_rate`` (a verdict on the
    results, not a setting that changes them), so raising it lets a refused stage resume."""
    return {k: v for k, v in cfg_dict.items() if k != "max_fallback_rate"}


class LLMStageRun:
    """One stage run's LLM (built once, lazily), its raw-reply file, its log file and counters."""

    def __init__(self, stage: str, out: Path, backend: str, llm: LLMConfig, endpoint: EndpointConfig,
                 max_fallback_rate: float, rank: int | None = None, world: int | None = None) -> None:
        if rank is None or world is None:
            rank, world = rank_and_world()
        suffix = f".rank-{rank}" if world > 1 else ""
        self.stage, self.out, self.backend = stage, Path(out), backend
        self.llm_cfg, self.endpoint, self.max_rate = llm, endpoint, max_fallback_rate
        self.raw_path = self.out / RAW_NAME.replace(".jsonl", f"{suffix}.jsonl")
        self.log_path = self.out / LOG_NAME.replace(".log", f"{suffix}.log")
        self._lm: ChatLM | None = None
        self.seen = self.fallbacks = self.batches = 0

    @property
    def uses_llm(self) -> bool:
        return self.backend == "llm"

    def batch_size(self, rules_default: int) -> int:
        """Runner batch: one LLM batch (one request with a server), so progress, the log and the
        resume point advance with every generation call; ``rules_default`` for the rules backend."""
        if not self.uses_llm:
            return rules_default
        return 1 if self.endpoint.base_url else max(1, self.llm_cfg.batch_size)

    def lm(self) -> ChatLM | None:
        """The stage's LLM, built on first use and kept for the rest of the stage (None for rules)."""
        if not self.uses_llm:
            return None
        if self._lm is None:
            t = time.time()
            try:
                self._lm = build_chat_lm(self.llm_cfg, self.endpoint)
            except ValueError as e:  # no model_path, no chat template: a setting, never an input's fault
                raise ConfigError(f"{self.stage}: {e}") from e
            where = self.endpoint.base_url or self.llm_cfg.model_path
            self.log(f"LLM ready: {where} ({time.time() - t:.1f} s)")
        return self._lm

    def log(self, message: str) -> None:
        """Append one timestamped line to the stage's log file (flushed at once)."""
        self.out.mkdir(parents=True, exist_ok=True)
        now = _dt.datetime.now().isoformat(timespec="seconds")
        with self.log_path.open("a", encoding="utf-8") as f:
            f.write(f"{now} {self.stage}: {message}\n")

    def before_batch(self) -> None:
        """Stop early (LLMFallbackError) once enough inputs show a fallback rate over the threshold."""
        if self.uses_llm and self.seen >= EARLY_CHECK_ITEMS and self.fallbacks / self.seen > self.max_rate:
            raise LLMFallbackError(fallback_message(self.stage, self.fallbacks, self.seen, self.max_rate, Counter(),
                                                    self.raw_path, early=True))

    def after_batch(self, rows: Sequence[dict[str, Any]], seconds: float, what: str) -> None:
        """Keep the batch's raw replies (LLM backend), count its fallbacks, write its log line."""
        self.batches += 1
        n_fb = sum(1 for r in rows if r.get("fallback"))
        self.seen, self.fallbacks = self.seen + len(rows), self.fallbacks + n_fb
        if self.uses_llm:
            with self.raw_path.open("a", encoding="utf-8") as f:
                f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
                f.flush()
                os.fsync(f.fileno())
        extra = f", {n_fb} fallback(s); this run so far: {self.fallbacks} of {self.seen}" if self.uses_llm else ""
        self.log(f"batch {self.batches}: {len(rows)} {what} in {seconds:.1f} s{extra}")


def fallback_message(stage: str, n_fb: int, n: int, max_rate: float, reasons: Counter, raw_path: Path, early: bool = False) -> str:
    """The one-line refusal: what happened, where to look, and what to do."""
    why = "; ".join(f"{k}: {v}" for k, v in reasons.most_common(3))
    when = f"after {n} inputs, " if early else ""
    return (f"{stage}: {when}the LLM's reply was unusable for {n_fb} of {n} inputs ({n_fb / n:.0%} > "
            f"{stage}.max_fallback_rate {max_rate:g}){f' ({why})' if why else ''}; raw replies in {raw_path}. "
            f"The model does not follow the {stage} instruction: use a larger instruct model (llm.model_path) or a "
            f"server (endpoint.base_url), or --backend rules; to accept the fallbacks set max_fallback_rate: 1.0 "
            f"(section {stage}: in a feedback config) and rerun: finished inputs are kept")


def read_raw(out: Path) -> dict[str, dict[str, Any]]:
    """id -> the last raw-reply line of that id, over every ``llm_raw*.jsonl`` of a stage folder."""
    rows: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(out).glob("llm_raw*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill: that batch was redone
                    continue
                rows[str(row.get("id"))] = row
    return rows


def llm_counts(rows: Iterable[dict[str, Any]], max_rate: float, fallback_to: str) -> dict[str, Any]:
    """Fallbacks (by reason) and dropped claims over the raw-reply lines of a stage's inputs."""
    rows = list(rows)
    reasons = Counter(str(r["fallback"]).split(":")[0] for r in rows if r.get("fallback"))
    n_fb = sum(reasons.values())
    return {"replies": len(rows), "fallbacks": n_fb, "fallback_rate": round(n_fb / len(rows), 4) if rows else 0.0,
            "fallback_to": fallback_to, "max_fallback_rate": max_rate, "fallback_reasons": dict(reasons.most_common()),
            "fallback_ids": [r["id"] for r in rows if r.get("fallback")][:MAX_IDS]}


def finish_stage(stage: str, out: Path, keys: Sequence[str], outputs_of: dict[str, int], llm: LLMStageRun,
                 fallback_to: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``summary.json`` (rank 0) and fail over the threshold; returns the summary.

    ``keys`` are the stage's input ids, ``outputs_of`` counts records per input id (claims per
    candidate); inputs that are done but have none are listed as ``zero_output``.
    """
    out = Path(out)
    done = set(read_progress(out / PROGRESS_NAME))
    zero = [k for k in keys if k in done and not outputs_of.get(k)]
    summary: dict[str, Any] = {"stage": stage, "backend": llm.backend, "inputs": len(keys),
                               "done": sum(1 for k in keys if k in done), "outputs": sum(outputs_of.values()),
                               "zero_output": {"count": len(zero), "ids": zero[:MAX_IDS]}, **(extra or {})}
    if llm.uses_llm:
        raw = read_raw(out)
        rows = [raw[k] for k in keys if k in raw]
        summary["llm"] = llm_counts(rows, llm.max_rate, fallback_to)
        if stage == "divide":
            summary["llm"]["claims_unsupported"] = sum(len(r.get("dropped") or ()) for r in rows)
        summary["llm"]["raw_file"] = str(out / RAW_NAME)
    if rank_and_world()[0] == 0:
        tmp = out / (SUMMARY_NAME + ".tmp")
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(tmp, out / SUMMARY_NAME)
    info = summary.get("llm")
    if info and info["replies"] and info["fallback_rate"] > llm.max_rate:
        raise LLMFallbackError(fallback_message(stage, info["fallbacks"], info["replies"], llm.max_rate,
                                                Counter(info["fallback_reasons"]), out / RAW_NAME))
    return summary


def read_summary(out: Path) -> dict[str, Any] | None:
    """A stage folder's ``summary.json`` (None when the stage wrote none)."""
    path = Path(out) / SUMMARY_NAME
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def summary_lines(summary: dict[str, Any] | None, what: str = "answers", problems_only: bool = False) -> list[str]:
    """Console lines for a stage summary: inputs with 0 outputs and the LLM fallback counts (with
    ``problems_only``, the fallback line only when some input fell back)."""
    if not summary:
        return []
    lines = []
    zero = summary.get("zero_output", {})
    if zero.get("count"):
        ids = ", ".join(zero["ids"][:5]) + (", ..." if zero["count"] > 5 else "")
        lines.append(f"{summary['stage']}: {zero['count']} {what} yielded 0 claims and are not paired: {ids}")
    info = summary.get("llm")
    if info and (info["fallbacks"] or info.get("claims_unsupported") or not problems_only):
        reasons = ", ".join(f"{k} {v}" for k, v in info["fallback_reasons"].items())
        lines.append(f"{summary['stage']}: LLM fallback ({info['fallback_to']}) for {info['fallbacks']} of {info['replies']} "
                     f"({info['fallback_rate']:.0%}, max {info['max_fallback_rate']:g}){f': {reasons}' if reasons else ''}"
                     + (f"; {info['claims_unsupported']} unsupported claims dropped" if "claims_unsupported" in info else "")
                     + f"; raw replies in {info['raw_file']}")
    return lines

"""A stage's serving backend: built once (lazily), its counts in the stage's ``summary.json`` and ``feedback.json``.

What a user can check in a stage folder run with ``backend: vllm | openai``:

* ``backend_requests.jsonl`` (openai): every request (images as their sha256) and response; a
  rerun answers finished requests from it;
* ``summary.json``: ``{"stage", "backend", "capabilities", "this_run": counts, "requests": counts
  over the request log (all runs), "outside_top_k" (conquer: claims, from ``outside_top_k.jsonl``), "warnings"}``; ``rlaifv feedback``
  copies it into ``feedback.json`` (``backends``) and its warnings into ``warnings``.

Counts: ``requests`` sent, ``retries`` (429 / 5xx / timeouts), ``reused`` (answered from the log),
``n_fallbacks`` (the server ignored ``n``: one request per seed), ``identical_candidates_prompts``
(prompts whose sampled candidates all came back equal: a server that ignores temperature / seed),
``outside_top_k`` (conquer claims whose yes or no word had no token in the returned top-k).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .base import Backend, build_backend

SUMMARY_NAME = "summary.json"
OUTSIDE_NAME = "outside_top_k.jsonl"  # conquer: one line per scored claim {"id", "outside"}
#: a share above which a count becomes a warning
DOMINATES = 0.5


class StageBackend:
    """The backend of one stage run (``cfg.backend``), built on first use."""

    def __init__(self, stage: str, cfg: Any, out: str | Path) -> None:
        self.stage, self.cfg, self.out = stage, cfg, Path(out)
        self.kind: str = getattr(cfg, "backend", "hf")
        self._backend: Backend | None = None
        self.outside_ids: list[str] = []  # this run's

    @property
    def active(self) -> bool:
        """True for vllm / openai (hf keeps the stage's own code path)."""
        return self.kind != "hf"

    def get(self) -> Backend:
        if self._backend is None:
            self._backend = build_backend(self.kind, self.stage, self.cfg, self.out)
        return self._backend

    def record_scored(self, ids: list[str], outside: list[str]) -> None:
        """Conquer: append one line per scored claim to ``outside_top_k.jsonl`` ({"id", "outside"}), so
        the summary counts claims (not requests) over every run of the stage."""
        from .base import rank_suffix

        self.outside_ids += outside
        out = set(outside)
        self.out.mkdir(parents=True, exist_ok=True)
        with (self.out / OUTSIDE_NAME.replace(".jsonl", f"{rank_suffix()}.jsonl")).open("a", encoding="utf-8") as f:
            f.write("".join(json.dumps({"id": i, "outside": i in out}) + "\n" for i in ids))
            f.flush()
            os.fsync(f.fileno())

    def finish(self) -> dict[str, Any] | None:
        """Write ``summary.json`` (rank 0) for a vllm / openai stage and close its backend; returns it (None for hf)."""
        if not self.active:
            return None
        from ..runner import rank_and_world
        from .transport import log_counts

        this_run = self._backend.counts() if self._backend is not None else {}
        summary: dict[str, Any] = {"stage": self.stage, "backend": self.kind, "this_run": this_run,
                                   "requests": log_counts(self.out) if self.kind == "openai" else {}}
        if self._backend is not None:
            summary["capabilities"] = asdict(self._backend.capabilities())
        if self.stage == "conquer":
            summary["outside_top_k"] = self._outside()
        summary["warnings"] = self._warnings(summary)
        if self._backend is not None:  # the stage is done: free the engine (a vLLM engine holds its GPU) for the next stage
            self._backend.close()
            self._backend = None
        for w in summary["warnings"]:
            warnings.warn(f"{self.stage} ({self.out}): {w}", stacklevel=2)
        if rank_and_world()[0] == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            tmp = self.out / (SUMMARY_NAME + ".tmp")
            tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
            os.replace(tmp, self.out / SUMMARY_NAME)
        return summary

    def _outside(self) -> dict[str, Any]:
        """Claims whose yes or no word was outside the top-k, over every run (``outside_top_k*.jsonl``; the
        last line of an id wins), with the ids (first 200)."""
        seen: dict[str, bool] = {}
        for path in sorted(self.out.glob(OUTSIDE_NAME.replace(".jsonl", "*.jsonl"))):
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill: that batch was redone
                    continue
                seen[str(row["id"])] = bool(row["outside"])
        ids = [i for i, o in seen.items() if o]
        return {"count": len(ids), "questions": len(seen), "ids": ids[:200]}

    def _warnings(self, summary: dict[str, Any]) -> list[str]:
        notes = list(summary.get("capabilities", {}).get("notes", ()))
        run = summary["this_run"]
        if run.get("identical_candidates_prompts"):
            n = run["identical_candidates_prompts"]
            notes.append(f"{n} prompt(s) got {getattr(self.cfg, 'n', '?')} identical sampled candidates: the server seems to ignore "
                         "temperature / seed (transformers serve samples greedily unless the model's generation_config sets "
                         "do_sample); such prompts give no preference pairs")
        out = summary.get("outside_top_k")
        if out and out["questions"] and out["count"] / out["questions"] > DOMINATES:
            notes.append(f"the yes or no word was outside the returned top-{self._k()} for {out['count']} of {out['questions']} "
                         "questions: their p_yes / p_no are lower bounds; raise endpoint.top_logprobs (vllm.top_logprobs)")
        return notes

    def _k(self) -> int:
        sec = self.cfg.endpoint if self.kind == "openai" else self.cfg.vllm
        return int(sec.top_logprobs)


def read_backend_summary(out: str | Path) -> dict[str, Any] | None:
    """A vllm / openai stage's ``summary.json`` (None for hf stages or none written)."""
    path = Path(out) / SUMMARY_NAME
    if not path.exists():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) and "backend" in data and "this_run" in data else None


def role_backend(kind: str, stage: str, name: str, section: Any, out: str | Path) -> Backend:
    """A backend serving the model ``name`` for one role of a multi-model stage (best-of-N).

    ``section`` is the config holding ``endpoint`` / ``vllm``: a stage section whose ``model`` is
    ``name`` is used as it is (its ``endpoint.model`` honoured); otherwise (the aligned and
    reference roles of best-of-N) the role's own model name is what the server is asked for.
    """
    from dataclasses import replace
    from types import SimpleNamespace

    if getattr(section, "model", None) == name:
        return build_backend(kind, stage, section, out)
    ns = SimpleNamespace(model=name, endpoint=replace(section.endpoint, model=name), vllm=section.vllm)
    return build_backend(kind, stage, ns, out)

"""Read a ``feedback`` run folder into the plain, JSON-ready data the report shows.

No model is loaded and nothing is written: the stage folders (``store.py`` shards), the
prompts file, ``feedback.json``, ``pairs/stats.json`` and every ``rejects.jsonl`` are read and
joined per prompt. A claim's verdict is the record's own (``ClaimScore.accepted``: rejected
iff ``p_no >= p_yes``); candidate scores, unpairable candidates ("mismatches") and the pairs
before the cap / before length balancing are recomputed with the pairs stage's own functions
(``stages/pairs.py``), and a recomputation that differs from the stored pairs is reported.
These are the building blocks; ``runs.py`` assembles a feedback run's view from them and
``loops.py`` the iterate and best-of-n views.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..manifest_paths import relocated
from ..records import Candidate, Claim, ClaimScore, PolarQuestion, PreferencePair, Prompt, RecordError
from ..stages.pairs import PairsConfig, balance_lengths, make_pairs, word_count
from ..store import REJECTS_NAME, StoreError, _list_shards, read_manifest, read_records

#: stage -> folder of a feedback run; mirrors ``stages/feedback.py::STAGE_FOLDERS`` (not imported
#: from there: that module loads torch and the model code, which a report never needs; a test
#: keeps the two equal).
STAGE_FOLDERS = {"sample": "candidates", "divide": "claims", "ask": "questions", "conquer": "scores",
                 "conquer_holistic": "holistic_scores"}

#: per-prompt flag names, in the order the page lists them
FLAGS = ("truncated", "no_claims", "rejects", "mismatch", "hallucination")


class ReportError(Exception):
    """The folder cannot be reported on (not a run, unreadable records); one line for the user."""


@dataclass
class RunView:
    """What the page shows about one run: its prompts, summary numbers and the plots' raw data."""

    kind: str  # feedback | iterate | best-of-n
    run: Path
    prompts: list[dict[str, Any]] = field(default_factory=list)  # per-prompt entries (see ``prompt_entry``)
    summary: dict[str, Any] = field(default_factory=dict)
    plot_data: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what could not be read, or was assumed
    #: prompt key -> (image file, image bytes): resolved into thumbnails or links by ``html.py``
    images: dict[str, tuple[Path | None, bytes | None]] = field(default_factory=dict)


def has_records(folder: Path) -> bool:
    """A stage folder holding at least one shard."""
    return folder.is_dir() and bool(_list_shards(folder))


#: record types read by :func:`records_of`'s fast path: plain fields only (Prompt decodes base64
#: and PreferencePair is few: those go through ``store.read_records``)
FAST_KINDS = (Candidate, Claim, PolarQuestion, ClaimScore)


def records_of(folder: Path, kind) -> list:
    """Every record of a stage folder ([] when the stage has not run); a corrupt folder is a ReportError.

    The stage's own writer validated these records, so the bulk kinds are rebuilt from their
    fields without ``Record.from_dict``'s per-field type checks (3x faster on a 10,000-prompt
    run); a line that is not JSON, lacks a field or repeats an id still fails, naming file:line.
    A torn last line of the ``.partial`` shard (a kill mid-write) is left out, as the stage does.
    """
    if not has_records(folder):
        return []
    if kind not in FAST_KINDS:
        try:
            return list(read_records(folder, kind))
        except (RecordError, StoreError) as e:
            raise ReportError(f"cannot read {folder}: {e}") from e
    names = [f.name for f in dataclasses.fields(kind)]
    out, seen = [], set()
    for _, partial, path in _list_shards(folder):
        body, _, tail = path.read_bytes().rpartition(b"\n")
        if tail.strip() and not partial:
            raise ReportError(f"cannot read {path}: its last line has no newline (finished shards are never torn: the file is corrupt)")
        for n, raw in enumerate(body.split(b"\n"), 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
                rec = kind(**{k: row[k] for k in names if k in row})
            except (ValueError, TypeError) as e:
                raise ReportError(f"cannot read {path}:{n}: {e}") from e
            if rec.id in seen:
                raise ReportError(f"cannot read {path}:{n}: duplicate id {rec.id!r}")
            seen.add(rec.id)
            out.append(rec)
    return out


def jsonl_rows(path: Path, partial_tail_ok: bool = False) -> list[tuple[int, Any]]:
    """(line number, parsed value) of each non-empty line of a JSONL file; ReportError naming the
    line for one that is not JSON, except the last line of a ``.partial`` shard when
    ``partial_tail_ok`` (a write cut short by a kill: the next run cuts it away)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            if partial_tail_ok and path.name.endswith(".partial") and n == len(lines):
                continue
            raise ReportError(f"{path}:{n}: not JSON ({e})") from e
    return out


def read_rejects(folder: Path) -> list[dict[str, Any]]:
    """The entries of a stage folder's rejects.jsonl ({id, source, reason, stage})."""
    path = folder / REJECTS_NAME
    if not path.exists():
        return []
    return [row if isinstance(row, dict) else {"id": None, "reason": str(row)} for _, row in jsonl_rows(path)]


# ----------------------------------------------------------------------------- the prompts


def prompts_path(run: Path, stage_folder: str = "candidates") -> Path | None:
    """The prompts file the first stage read: ``run/prompts/prompts.jsonl`` (sandbox prompts), else
    the input in ``run/stage_folder/manifest.json``, followed if the whole run folder was moved since."""
    own = run / "prompts" / "prompts.jsonl"
    if own.exists():
        return own
    try:
        manifest = read_manifest(run / stage_folder) or {}
    except StoreError:
        return None
    for entry in manifest.get("inputs", []):
        path = Path(entry.get("path", "")) if isinstance(entry, dict) else None
        if path is None or not str(path):
            continue
        if path.exists():
            return path
        moved = relocated(path, manifest.get("location"), str((run / stage_folder).resolve()))
        if moved is not None and moved.exists():
            return moved
    return None


def read_prompts(run: Path, notes: list[str], stage_folder: str = "candidates") -> tuple[dict[str, Prompt], Path | None]:
    """(prompt id -> Prompt, the folder image paths are relative to); malformed lines are skipped
    (the first stage already set them aside in its rejects.jsonl)."""
    path = prompts_path(run, stage_folder)
    if path is None:
        notes.append(f"the prompts file was not found (not in the run folder, nor at the path in {stage_folder}/manifest.json): "
                     "questions and images are missing")
        return {}, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            prompts = {p.prompt_id: p for p in read_records(path, Prompt, "skip")}
        except (RecordError, StoreError, OSError) as e:
            notes.append(f"the prompts file {path} could not be read ({e})")
            return {}, None
    return prompts, path.parent if path.is_file() else path


# ----------------------------------------------------------------------------- pairs, before and after


def pairs_config(pairs: list[PreferencePair], notes: list[str]) -> PairsConfig:
    """The pairs stage's config, from a stored pair's provenance (the stage has no manifest)."""
    for p in pairs:
        cfg = p.provenance.get("config") if isinstance(p.provenance, dict) else None
        if isinstance(cfg, dict):
            names = {f.name for f in dataclasses.fields(PairsConfig)}
            return PairsConfig(**{k: v for k, v in cfg.items() if k in names})
    notes.append("no stored pair records the pairs config: the default pairs settings are assumed for the "
                 "before-cap / before-balancing recomputation")
    return PairsConfig()


def pair_stages(scored, prompts: dict[str, Prompt], cfg: PairsConfig, stored: list[PreferencePair],
                notes: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The pairs at three points: ``before_cap`` (every pair passing the gap rule), ``after_cap``
    (before length balancing) and ``final`` (the stored pairs), each {c, r, gap, lc, lr}."""
    known = {pid: prompts.get(pid) or Prompt(pid, "?", image="?") for pid in {s.prompt_id for s in scored}}
    before, _ = make_pairs(scored, known, dataclasses.replace(cfg, max_pairs_per_prompt=None, length_balance=False))
    capped, _ = make_pairs(scored, known, dataclasses.replace(cfg, length_balance=False))
    again = balance_lengths(capped)[0] if cfg.length_balance else capped  # = make_pairs(scored, known, cfg)
    if {p.id for p in again} != {p.id for p in stored}:
        notes.append(f"recomputing the pairs from the stored scores gives {len(again)} pairs, the run stored {len(stored)}: "
                     "the records changed after the pairs stage ran (the page shows the stored pairs)")

    def rows(ps) -> list[dict[str, Any]]:
        return [{"c": p.chosen_id, "r": p.rejected_id, "gap": p.chosen_score - p.rejected_score,
                 "lc": word_count(p.chosen), "lr": word_count(p.rejected), "prompt": p.prompt_id} for p in ps]

    return {"before_cap": rows(before), "after_cap": rows(capped), "final": rows(stored)}


def pair_fates(stages: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Per prompt, every pair that passed the gap rule with its fate: kept, cap (dropped by the
    per-prompt cap) or balance (dropped by length balancing)."""
    kept = {(p["c"], p["r"]) for p in stages["final"]}
    capped = {(p["c"], p["r"]) for p in stages["after_cap"]}
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    seen = set()
    for p in stages["before_cap"] + stages["final"]:
        key = (p["c"], p["r"])
        if key in seen:
            continue
        seen.add(key)
        fate = "kept" if key in kept else "balance" if key in capped else "cap"
        out[p["prompt"]].append({"c": p["c"], "r": p["r"], "gap": p["gap"], "fate": fate})
    return out


# ----------------------------------------------------------------------------- per candidate


def claim_rows(claims: list[Claim], questions: dict[str, PolarQuestion], scores: dict[str, ClaimScore]) -> list[dict[str, Any]]:
    """A candidate's claims with the asked question, p_yes / p_no and the verdict (acc / rej / none)."""
    out = []
    for cl in sorted(claims, key=lambda c: c.claim_index):
        s, q = scores.get(cl.id), questions.get(cl.id)
        row: dict[str, Any] = {"id": cl.id, "t": cl.text, "q": s.question if s else (q.question if q else None)}
        if s is not None:
            row.update(y=round(s.p_yes, 4), n=round(s.p_no, 4), v="acc" if s.accepted else "rej")
        else:
            row["v"] = "none"
        out.append(row)
    return out


def holistic_rows(cand: Candidate, scores: dict[str, ClaimScore]) -> list[dict[str, Any]]:
    """Holistic scoring: the one whole-answer question, shown as the candidate's only "claim"."""
    s = scores.get(f"{cand.id}/holistic")
    if s is None:
        return []
    return [{"id": s.claim_id, "t": "(the whole answer)", "q": s.question, "y": round(s.p_yes, 4), "n": round(s.p_no, 4),
             "v": "acc" if s.accepted else "rej"}]


def truncated_flag(cand: Candidate) -> bool | None:
    """Whether the answer hit max_new_tokens (``decoding['truncated']``; None: not recorded by this run)."""
    value = cand.decoding.get("truncated") if isinstance(cand.decoding, dict) else None
    return value if isinstance(value, bool) else None


def prompt_of(record_id: str, stage: str) -> str:
    """The prompt id in a reject's record id: a prompt (sample, conquer), a candidate ``p#k``
    (divide) or a claim ``p#k/i`` (ask)."""
    if stage == "ask":
        record_id = record_id.rsplit("/", 1)[0]
    return record_id.rsplit("#", 1)[0] if stage in ("divide", "ask") else record_id


def rejects_by_prompt(run: Path) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]], dict[str, list[dict]]]:
    """(prompt id -> its rejects, rejects that name no prompt, stage -> all its rejects)."""
    by_prompt: dict[str, list[dict[str, Any]]] = defaultdict(list)
    loose: list[dict[str, Any]] = []
    per_stage: dict[str, list[dict]] = {}
    for stage, folder in STAGE_FOLDERS.items():
        if not (run / folder).exists():
            continue
        rows = read_rejects(run / folder)
        per_stage[stage] = rows
        for r in rows:
            rid = r.get("id")
            entry = {"stage": stage, "reason": str(r.get("reason", "")), "id": rid}
            if not isinstance(rid, str) or not rid:
                loose.append(entry)
                continue
            pid = prompt_of(rid, stage)
            by_prompt[pid].append(entry)
    return by_prompt, loose, per_stage


def iter_prompt_ids(prompts: dict[str, Prompt], candidates: list[Candidate], rejects: dict[str, list]) -> Iterator[str]:
    """Every prompt id the run knows: the prompts file's order, then ids only the records name."""
    seen = dict.fromkeys(prompts)
    for c in candidates:
        seen.setdefault(c.prompt_id, None)
    for pid in rejects:
        seen.setdefault(pid, None)
    yield from seen


def reason_counts(rows: list[dict[str, Any]], top: int = 5) -> list[list[Any]]:
    """The most frequent reject reasons [[reason, count], ...] (the rest summed as "other")."""
    counts = Counter(str(r.get("reason", "")) for r in rows)
    out: list[list[Any]] = [[reason, n] for reason, n in counts.most_common(top)]
    rest = sum(counts.values()) - sum(n for _, n in out)
    if rest:
        out.append([f"{len(counts) - top} other reasons", rest])
    return out

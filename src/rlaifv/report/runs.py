"""Which kind of run a folder is, and the :class:`RunView` of a feedback, iterate or best-of-n run.

* ``feedback``: ``feedback.json`` or the stage folders (``candidates/`` ...; see ``collect.py``);
* ``iterate``: ``iter-<i>/feedback/`` folders, ``report.json`` (one row per iteration);
* ``best-of-n``: ``results/`` (one record per prompt, every candidate scored) and ``summary.json``.

Sandbox prompts (``metadata['source'] == 'sandbox'``) get the ground-truth overlay of
``sandbox/report_overlay.py``, imported only then.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..records import Candidate, Claim, ClaimScore, PolarQuestion, PreferencePair, Prompt
from ..store import StoreError, read_manifest
from .collect import (STAGE_FOLDERS, ReportError, RunView, claim_rows, has_records, holistic_rows, iter_prompt_ids,
                      pair_fates, pair_stages, pairs_config, read_prompts, reason_counts, records_of, rejects_by_prompt,
                      truncated_flag)

KINDS = ("feedback", "iterate", "best-of-n")


def read_json(path: Path, default: Any = None) -> Any:
    """A JSON file's content, ``default`` when absent; a broken file is a ReportError naming it."""
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ReportError(f"{path} is not valid JSON ({e})") from e


def iteration_dirs(run: Path) -> list[tuple[int, Path]]:
    """(i, run/iter-i) for every iteration folder, in order."""
    dirs = [(int(p.name[5:]), p) for p in run.glob("iter-*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(dirs)


def detect_kind(run: Path) -> str:
    """feedback | iterate | best-of-n; ReportError (one line) for a folder that is none of them."""
    if not run.exists():
        raise ReportError(f"{run} does not exist")
    if not run.is_dir():
        raise ReportError(f"{run} is a file, not a run folder (give the folder `rlaifv feedback --out` wrote)")
    try:
        stage = (read_manifest(run) or {}).get("stage")
    except StoreError as e:
        raise ReportError(str(e)) from e
    if stage == "iterate" or iteration_dirs(run):
        return "iterate"
    if (run / "results").is_dir() or ((run / "summary.json").exists() and not (run / "candidates").exists()):
        return "best-of-n"
    if (run / "feedback.json").exists() or has_records(run / "candidates"):
        return "feedback"
    raise ReportError(f"{run} is not a run folder: expected feedback.json or candidates/ (a feedback run), "
                      "iter-*/ (an iterate run) or results/ (a best-of-n run)")


# ----------------------------------------------------------------------------- feedback


def _scored(candidates: list[Candidate], claims: list[Claim], scores: dict[str, ClaimScore], holistic: bool):
    """(scored candidates, {candidate id: why it cannot be scored}) as the pairs stage computes them."""
    from ..stages.pairs import score_candidates, score_holistic

    if holistic:
        scored, mismatches = score_holistic(candidates, {cid.rsplit("/", 1)[0]: s for cid, s in scores.items()})
    else:
        by: dict[str, list[Claim]] = defaultdict(list)
        for c in claims:
            by[c.candidate_id].append(c)
        scored, mismatches = score_candidates(candidates, by, scores)
    return scored, dict(mismatches)


def _stale(run: Path, scored) -> dict[str, str]:
    """Candidates whose verdicts in ``pairs/scored_candidates.json`` differ from their stored claim scores."""
    stored = read_json(run / "pairs" / "scored_candidates.json", [])
    now = {s.candidate_id: s.rejected for s in scored}
    out = {}
    for row in stored if isinstance(stored, list) else []:
        cid = row.get("candidate_id") if isinstance(row, dict) else None
        if cid in now and row.get("rejected") != now[cid]:
            out[cid] = f"the pairs stage saw verdicts {row.get('rejected')}, the stored claim scores give {now[cid]}"
    return out


def _candidate_entry(c: Candidate, rows: list[dict], score: float | None, why: str | None, rejects: list[dict]) -> dict[str, Any]:
    return {"k": c.sample_index, "id": c.id, "text": c.text, "words": len(c.text.split()), "trunc": truncated_flag(c),
            "score": score, "claims": rows, "mismatch": why, "rejects": rejects}


def _flags(entry: dict[str, Any], holistic: bool) -> list[str]:
    cands = entry["cands"]
    flags = []
    if any(c["trunc"] for c in cands):
        flags.append("truncated")
    if not holistic and any(not c["claims"] for c in cands):
        flags.append("no_claims")
    if entry["rejects"] or any(c["rejects"] for c in cands):
        flags.append("rejects")
    if any(c["mismatch"] for c in cands):
        flags.append("mismatch")
    return flags


def collect_feedback(run: Path, iteration: int | None = None) -> RunView:
    """The view of one feedback run folder (an iterate run's ``iter-i/feedback`` too)."""
    view = RunView("feedback", run)
    prompts, base = read_prompts(run, view.notes)
    candidates = records_of(run / "candidates", Candidate)
    holistic = has_records(run / "holistic_scores") and not has_records(run / "claims")
    claims = records_of(run / "claims", Claim)
    questions = {q.claim_id: q for q in records_of(run / "questions", PolarQuestion)}
    scores = {s.claim_id: s for s in records_of(run / ("holistic_scores" if holistic else "scores"), ClaimScore)}
    stored = records_of(run / "pairs", PreferencePair)
    scored, mismatches = _scored(candidates, claims, scores, holistic)
    mismatches.update(_stale(run, scored))
    cfg = pairs_config(stored, view.notes)
    if holistic:
        cfg.scoring = "holistic"
    stages = pair_stages(scored, prompts, cfg, stored, view.notes)
    fates = pair_fates(stages)
    rejects, loose, per_stage = rejects_by_prompt(run)
    score_of = {s.candidate_id: s.score for s in scored}
    claims_by: dict[str, list[Claim]] = defaultdict(list)
    for cl in claims:
        claims_by[cl.candidate_id].append(cl)
    cands_by: dict[str, list[Candidate]] = defaultdict(list)
    for c in candidates:
        cands_by[c.prompt_id].append(c)
    prefix = f"it{iteration}/" if iteration is not None else ""
    for pid in iter_prompt_ids(prompts, candidates, rejects):
        p = prompts.get(pid)
        mine = [r for r in rejects.get(pid, []) if r["stage"] in ("sample", "conquer", "conquer_holistic")]
        entry: dict[str, Any] = {"key": prefix + pid, "id": pid, "it": iteration, "q": p.question if p else None,
                                 "pairs": fates.get(pid, []), "rejects": mine, "cands": []}
        for c in sorted(cands_by.get(pid, []), key=lambda c: c.sample_index):
            rows = holistic_rows(c, scores) if holistic else claim_rows(claims_by.get(c.id, []), questions, scores)
            theirs = [r for r in rejects.get(pid, []) if r["stage"] in ("divide", "ask") and (r["id"] == c.id or str(r["id"]).startswith(c.id + "/"))]
            entry["cands"].append(_candidate_entry(c, rows, score_of.get(c.id), mismatches.get(c.id), theirs))
        entry["flags"] = _flags(entry, holistic)
        view.prompts.append(entry)
        if p is not None:
            view.images[entry["key"]] = ((base / p.image) if p.image and base is not None else None, p.image_bytes)
    records = {"sample": len(candidates), "divide": len(claims), "ask": len(questions), "conquer": len(scores), "conquer_holistic": len(scores)}
    view.summary = _feedback_summary(run, view, records, per_stage, loose, stages, scored, holistic)
    view.plot_data = _feedback_plot_data(view, stages, scores)
    _overlay(view, prompts, prefix)
    return view


def _feedback_summary(run: Path, view: RunView, records: dict[str, int], per_stage: dict, loose: list, stages: dict, scored,
                      holistic: bool) -> dict[str, Any]:
    """Counts per stage (records, rejects and reasons, seconds), claim numbers, pairs, labeler mass."""
    fb = read_json(run / "feedback.json", {})
    if not fb:
        view.notes.append("feedback.json is missing: the run has not finished (wall times and warnings unknown)")
    seconds = fb.get("stages", {}) if isinstance(fb, dict) else {}
    cands = [c for e in view.prompts for c in e["cands"]]
    claim_list = [cl for c in cands for cl in c["claims"]]
    judged = [cl for cl in claim_list if cl["v"] != "none"]
    rejected = sum(cl["v"] == "rej" for cl in judged)
    rows = []
    for stage, folder in STAGE_FOLDERS.items():
        if not (run / folder).exists():
            continue
        rows.append({"stage": stage, "folder": folder, "records": records[stage], "rejects": len(per_stage.get(stage, [])),
                     "reasons": reason_counts(per_stage.get(stage, [])), "seconds": seconds.get(stage)})
    rows.append({"stage": "pairs", "folder": "pairs", "records": len(stages["final"]), "rejects": None, "reasons": [],
                 "seconds": seconds.get("pairs")})
    trunc = [c["trunc"] for c in cands]
    return {
        "kind": "feedback", "prompts": len(view.prompts), "candidates": len(cands), "stages": rows,
        "loose_rejects": reason_counts(loose), "n_loose_rejects": len(loose),
        "claims": len(claim_list), "judged": len(judged), "rejected_claims": rejected,
        "rejection_rate": rejected / len(judged) if judged else None,
        "claims_per_answer": len(claim_list) / len(cands) if cands and not holistic else None,
        "candidates_with_rejected": sum(any(cl["v"] == "rej" for cl in c["claims"]) for c in cands),
        "no_claims": sum(not c["claims"] for c in cands) if not holistic else None,
        "truncated": sum(t is True for t in trunc) if any(t is not None for t in trunc) else None,
        "mismatched": sum(bool(c["mismatch"]) for c in cands), "scored": len(scored), "holistic": holistic,
        "pairs_stats": read_json(run / "pairs" / "stats.json", None) or fb.get("pairs"),
        "pair_points": {k: len(v) for k, v in stages.items()},
        "mass": read_json(run / ("holistic_scores" if holistic else "scores") / "mass.json", None) or fb.get("conquer"),
        "warnings": list(fb.get("warnings", [])) if isinstance(fb, dict) else [],
    }


def _feedback_plot_data(view: RunView, stages: dict, scores: dict[str, ClaimScore]) -> dict[str, Any]:
    mass = view.summary.get("mass") or {}
    return {
        "gaps": {k: [p["gap"] for p in v] for k, v in stages.items()},
        "lengths": {k: [[p["lc"] for p in v], [p["lr"] for p in v]] for k, v in stages.items()},
        "claims_per_answer": [len(c["claims"]) for e in view.prompts for c in e["cands"]] if not view.summary["holistic"] else [],
        "mass": [s.p_yes + s.p_no for s in scores.values()],
        "mass_threshold": mass.get("threshold", 0.5), "mass_mode": mass.get("mode"),
    }


def _overlay(view: RunView, prompts: dict[str, Prompt], prefix: str) -> None:
    """Sandbox prompts: mark each claim true/false against the scene and each answer's hallucinated objects."""
    scenes = {prefix + pid: p.metadata for pid, p in prompts.items()
              if isinstance(p.metadata, dict) and p.metadata.get("source") == "sandbox" and p.metadata.get("scene")}
    if not scenes:
        return
    from ..sandbox.report_overlay import overlay

    view.summary["truth"] = overlay(view.prompts, scenes)
    for e in view.prompts:
        if e.get("hallucination"):
            e["flags"].append("hallucination")

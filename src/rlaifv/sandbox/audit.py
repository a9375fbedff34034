"""Audit a feedback run on sandbox prompts against the exact ground truth.

Answers the questions the method's claims rest on, with numbers:
* how many claims per answer the divide stage makes;
* how well the labeler's rejections agree with the truth (precision / recall of rejected
  claims, where a claim is false iff the object it states is not in the scene as stated);
* how often a pair's chosen answer truly has fewer hallucinated objects (CHAIR sense: a shape
  absent from the scene) than its rejected answer, and fewer false claims.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from ..eval.chair import answer_chair
from ..records import Candidate, Claim, ClaimScore, PreferencePair, Prompt, RecordError
from ..store import read_records
from .parse import Mention, parse_sentence
from .prompts import scene_of
from .world import Scene


def claim_truth(claim: str, scene: Scene) -> bool | None:
    """True/False for a parsable sandbox claim (every stated attribute must match); None if unparsable."""
    ok, m = parse_sentence(claim)
    if not ok or m is None:
        return None
    obj = scene.by_shape(m.shape)
    return obj is not None and _matches(m, obj)


def _matches(m: Mention, obj) -> bool:
    return all(getattr(m, a) is None or getattr(m, a) == b for a, b in (("colour", obj.colour), ("size", obj.size), ("cell", obj.cell)))


def tally_verdict(counts: dict[str, int], truth: bool | None, rejected: bool) -> None:
    """Count one claim verdict against the scene (a rejected claim should be false): ``tp`` / ``fp``
    / ``fn`` / ``tn``, or ``unparsable`` when the claim cannot be checked."""
    key = "unparsable" if truth is None else ("fp" if truth else "tp") if rejected else ("tn" if truth else "fn")
    counts[key] = counts.get(key, 0) + 1


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0, "tp": tp, "fp": fp, "fn": fn}


def audit_run(run: str | Path, prompts_file: str | Path | None = None) -> dict[str, Any]:
    """Numbers for a finished ``rlaifv feedback`` run over sandbox prompts."""
    run = Path(run)
    ppath = Path(prompts_file or run / "prompts" / "prompts.jsonl")
    prompts = {p.prompt_id: p for p in read_records(ppath, Prompt)}
    scenes = {pid: scene_of(p) for pid, p in prompts.items()}
    unscened = [pid for pid, scene in scenes.items() if scene is None]
    if unscened:  # a user's own photos have no ground truth to audit against
        raise RecordError(f"{ppath}: {len(unscened)} of {len(scenes)} prompts (first {unscened[0]!r}) have no sandbox scene in "
                          "their metadata; `rlaifv sandbox audit` checks runs over sandbox prompts only (their ground truth)")
    cands = {c.id: c for c in read_records(run / "candidates", Candidate)}
    claims = list(read_records(run / "claims", Claim))
    scores = {s.claim_id: s for s in read_records(run / "scores", ClaimScore)}
    per_cand: dict[str, int] = defaultdict(int)
    n: dict[str, int] = dict.fromkeys(("tp", "fp", "fn", "tn", "unparsable"), 0)
    false_claims: dict[str, int] = defaultdict(int)
    for cl in claims:
        per_cand[cl.candidate_id] += 1
        truth = claim_truth(cl.text, scenes[cands[cl.candidate_id].prompt_id])
        s = scores.get(cl.id)
        if s is None:  # not scored: only its parsability is counted
            n["unparsable"] += truth is None
            continue
        tally_verdict(n, truth, not s.accepted)
        false_claims[cl.candidate_id] += truth is False
    tp, fp, fn, tn, unparsable = n["tp"], n["fp"], n["fn"], n["tn"], n["unparsable"]
    pairs = list(read_records(run / "pairs", PreferencePair)) if any((run / "pairs").glob("shard-*")) else []
    return {
        "prompts": len(prompts), "candidates": len(cands), "claims": len(claims),
        "claims_per_answer": round(len(claims) / max(1, len(cands)), 3),
        "unparsable_claims": unparsable,
        "labeler_rejections_vs_truth": _prf(tp, fp, fn) | {"tn": tn, "accuracy": round((tp + tn) / max(1, tp + tn + fp + fn), 4)},
        "pairs": len(pairs),
        **_pair_quality(pairs, cands, scenes, false_claims),
        "pair_temperatures": _pair_temperatures(pairs, cands),
    }


def _pair_temperatures(pairs: list[PreferencePair], cands: dict[str, Candidate]) -> dict[str, dict[str, int]]:
    """How many chosen / rejected answers were sampled at each temperature: with confounded
    sampling (several temperatures) a skew here means the preference partly encodes decoding."""
    out: dict[str, dict[str, int]] = {"chosen": {}, "rejected": {}}
    for p in pairs:
        for side, cid in (("chosen", p.chosen_id), ("rejected", p.rejected_id)):
            t = str(cands[cid].decoding.get("temperature"))
            out[side][t] = out[side].get(t, 0) + 1
    return {side: dict(sorted(c.items())) for side, c in out.items()}


def _pair_quality(pairs: list[PreferencePair], cands: dict[str, Candidate], scenes: dict, false_claims: dict[str, int]) -> dict[str, Any]:
    if not pairs:
        return {"pairs_chosen_fewer_hallucinated_objects": None, "pairs_chosen_fewer_false_claims": None}
    hal = lambda cid: len(answer_chair(cands[cid].text, scenes[cands[cid].prompt_id]).hallucinated)  # noqa: E731
    fewer_obj = sum(hal(p.chosen_id) < hal(p.rejected_id) for p in pairs)
    more_obj = sum(hal(p.chosen_id) > hal(p.rejected_id) for p in pairs)
    fewer_false = sum(false_claims[p.chosen_id] < false_claims[p.rejected_id] for p in pairs)
    return {
        "pairs_chosen_fewer_hallucinated_objects": round(fewer_obj / len(pairs), 4),
        "pairs_chosen_more_hallucinated_objects": round(more_obj / len(pairs), 4),
        "pairs_chosen_fewer_false_claims": round(fewer_false / len(pairs), 4),
    }

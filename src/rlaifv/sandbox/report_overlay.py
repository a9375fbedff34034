"""The sandbox's ground truth laid over a run report (``rlaifv report``, ``src/rlaifv/report/``).

Sandbox prompts carry their scene graph in ``metadata['scene']``, so every claim and answer of
a report can be checked exactly: a claim is true iff the object it states is in the scene as
stated (``audit.claim_truth``), an answer's hallucinated objects are the shapes it mentions
that the scene lacks (``eval/chair.py``). The report package calls :func:`overlay` only when
its prompts carry that metadata; nothing here is imported for other runs.
"""

from __future__ import annotations

from typing import Any

from ..eval.chair import answer_chair
from .audit import claim_truth
from .world import Scene


def describe(scene: Scene) -> list[str]:
    """The scene's objects in reading order, as the report lists them ("large red star (top left)")."""
    return [f"{o.size} {o.colour} {o.shape} ({o.position})" for o in scene.reading_order()]


def overlay(prompts: list[dict[str, Any]], metadata: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Annotate the report's prompt entries in place and return run-level truth numbers.

    Each claim gets ``gt`` (True / False / None when the sentence does not parse), each
    candidate ``hall`` (its hallucinated shapes), each prompt ``truth`` (its objects) and
    ``hallucination`` (a false claim or a hallucinated object somewhere). ``metadata`` maps a
    prompt entry's ``key`` to its prompt's metadata.
    """
    conf = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}  # positive = the labeler rejects; truth: the claim is false
    mentions = hallucinated = unparsable = 0
    for entry in prompts:
        meta = metadata.get(entry["key"])
        if meta is None:
            continue
        scene = Scene.from_dict(meta["scene"])
        entry["truth"] = describe(scene)
        bad = False
        for cand in entry["cands"]:
            chair = answer_chair(cand["text"], scene)
            cand["hall"] = list(chair.hallucinated)
            mentions += len(chair.mentioned)
            hallucinated += len(chair.hallucinated)
            bad |= bool(chair.hallucinated)
            for cl in cand["claims"]:
                cl["gt"] = claim_truth(cl["t"], scene)
                unparsable += cl["gt"] is None
                bad |= cl["gt"] is False
                if cl["gt"] is not None and cl["v"] in ("acc", "rej"):
                    false, rej = cl["gt"] is False, cl["v"] == "rej"
                    conf["tp" if false and rej else "fn" if false else "fp" if rej else "tn"] += 1
        entry["hallucination"] = bad
    return {**conf, **_rates(conf), "chair_i": hallucinated / mentions if mentions else None,
            "unparsable_claims": unparsable, "pairs_chosen_fewer_hallucinated": _pair_quality(prompts)}


def _rates(c: dict[str, int]) -> dict[str, float | None]:
    """Precision / recall of the labeler's rejections against the truth (a false claim should be rejected)."""
    p = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else None
    r = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else None
    n = sum(c.values())
    return {"precision": p, "recall": r, "accuracy": (c["tp"] + c["tn"]) / n if n else None}


def _pair_quality(prompts: list[dict[str, Any]]) -> float | None:
    """Share of kept pairs whose chosen answer has fewer hallucinated objects than the rejected one."""
    wins = total = 0
    for entry in prompts:
        hall = {c["id"]: len(c.get("hall", [])) for c in entry["cands"]}
        for p in entry["pairs"]:
            if p["fate"] == "kept" and p["c"] in hall and p["r"] in hall:
                total += 1
                wins += hall[p["c"]] < hall[p["r"]]
    return wins / total if total else None

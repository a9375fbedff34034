"""A synthetic feedback run folder, records written directly (no model): what the report's tests
and ``bench/bench_report.py`` measure the page on at 10,000 prompts.

The records are plausible sandbox-like ones (sentences about coloured shapes, p_yes / p_no with a
yes+no mass between 0.6 and 1), scored and paired by the pairs stage's own functions, so the
run is internally consistent: the report recomputes exactly the stored pairs.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from ..records import SCHEMA_VERSION, Candidate, Claim, ClaimScore, Prompt
from ..stages.pairs import PairsConfig, make_pairs, score_candidates

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "ring", "cross", "heart")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
PLACES = ("top left", "top middle", "top right", "middle left", "center", "bottom left", "bottom right")


def _write_jsonl(folder: Path, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "shard-00000.jsonl").open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _images(folder: Path, k: int = 16) -> list[str]:
    """k small PNGs (48 px, one coloured disc each), as a sandbox run has."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(k):
        im = Image.new("RGB", (48, 48), "white")
        ImageDraw.Draw(im).ellipse((6 + i % 4 * 4, 6, 30 + i % 4 * 4, 30), fill=COLOURS[i % len(COLOURS)])
        im.save(folder / f"img-{i:02d}.png", optimize=True)
        names.append(f"images/img-{i:02d}.png")
    return names


def _sentence(rng: random.Random) -> str:
    return f"There is a {rng.choice(('small', 'large'))} {rng.choice(COLOURS)} {rng.choice(SHAPES)} at the {rng.choice(PLACES)}."


def synthetic_run(out: str | Path, n_prompts: int, n: int = 4, claims: int = 4, seed: int = 0) -> Path:
    """Write a finished feedback run of ``n_prompts`` prompts x ``n`` candidates x ``claims`` claims
    (1% of the prompts set aside at sampling, 10% of the answers truncated) into ``out``."""
    rng = random.Random(seed)
    out = Path(out)
    images = _images(out / "prompts" / "images")
    prompts = [Prompt(f"syn-{i:06d}", "Describe the image in detail.", image=images[i % len(images)]) for i in range(n_prompts)]
    (out / "prompts" / "prompts.jsonl").write_text("".join(json.dumps(p.to_dict()) + "\n" for p in prompts))
    cands, cls, qs, scores, rejects = [], [], [], [], []
    for p in prompts:
        if rng.random() < 0.01:
            rejects.append({"id": p.prompt_id, "source": f"sample input {p.prompt_id!r}", "reason": "synthetic: image unreadable", "stage": "sample"})
            continue
        for k in range(n):
            cid, sents = f"{p.prompt_id}#{k}", [_sentence(rng) for _ in range(claims)]
            cands.append(Candidate(p.prompt_id, k, rng.getrandbits(62), " ".join(sents), {"temperature": 0.7, "top_p": 1.0,
                                   "max_new_tokens": 64, "do_sample": True, "truncated": rng.random() < 0.1}, "synthetic"))
            for i, s in enumerate(sents):
                mass, share = rng.uniform(0.6, 1.0), rng.random() ** 0.5
                question = "Is there " + s[len("There is "):-1] + "? Please answer yes or no."
                cls.append(Claim(cid, i, s))
                qs.append({"claim_id": f"{cid}/{i}", "claim": s, "question": question, "schema_version": SCHEMA_VERSION, "kind": "question"})
                scores.append(ClaimScore(f"{cid}/{i}", question, round(mass * share, 6), round(mass * (1 - share), 6)))
    _write_jsonl(out / "candidates", [c.to_dict() for c in cands])
    _write_jsonl(out / "claims", [{"candidate_id": c.candidate_id, "claim_index": c.claim_index, "text": c.text,
                                   "schema_version": SCHEMA_VERSION, "kind": "claim"} for c in cls])
    _write_jsonl(out / "questions", qs)
    _write_jsonl(out / "scores", [{"claim_id": s.claim_id, "question": s.question, "p_yes": s.p_yes, "p_no": s.p_no, "accepted": s.accepted,
                                   "schema_version": SCHEMA_VERSION, "kind": "claim_score"} for s in scores])
    (out / "candidates" / "rejects.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rejects))
    _pairs(out, prompts, cands, cls, scores)
    counts = {"prompts": n_prompts - len(rejects), "candidates": len(cands), "claims": len(cls), "questions": len(qs), "scores": len(scores)}
    summary = {"synthetic": True, "stages": {}, "counts": counts, "rejected": {"sample": len(rejects)}, "warnings": []}
    (out / "feedback.json").write_text(json.dumps(summary, indent=1))
    return out


def _pairs(out: Path, prompts, cands, cls, scores) -> None:
    by: dict[str, list[Claim]] = {}
    for c in cls:
        by.setdefault(c.candidate_id, []).append(c)
    scored, mismatches = score_candidates(cands, by, {s.claim_id: s for s in scores})
    pairs, stats = make_pairs(scored, {p.prompt_id: p for p in prompts}, PairsConfig(), mismatches=mismatches)
    _write_jsonl(out / "pairs", [p.to_dict() for p in pairs])
    (out / "pairs" / "stats.json").write_text(json.dumps(stats, indent=1))
    (out / "pairs" / "scored_candidates.json").write_text(json.dumps([c.to_dict() for c in scored]))

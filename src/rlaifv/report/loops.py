"""Views of the runs built on feedback: ``iterate`` (one feedback run per iteration, plus the
per-iteration report rows) and ``best-of-n`` (N candidates per prompt, scored by every scorer).

Best-of-n records are read as plain JSON rows (``stages/bestofn.py`` loads torch; a report
needs none of it); a row missing a field the page needs is a ReportError naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..store import _list_shards
from .collect import ReportError, RunView, jsonl_rows, read_prompts, read_rejects, reason_counts
from .runs import collect_feedback, iteration_dirs, read_json

#: report.json columns drawn as curves (key, label)
CURVES = (("chair_s", "CHAIR_s"), ("chair_i", "CHAIR_i"), ("recall", "recall"), ("pope_f1", "POPE F1"))


def _rows_of(run: Path) -> list[dict[str, Any]]:
    """The per-iteration report rows: report.json, else iter-0.json + each done.json's row."""
    rows = read_json(run / "report.json", None)
    if isinstance(rows, list):
        return [r for r in rows if isinstance(r, dict)]
    out = [read_json(run / "iter-0.json", None)]
    out += [(read_json(d / "done.json", None) or {}).get("row") for _, d in iteration_dirs(run)]
    return [r for r in out if isinstance(r, dict)]


def collect_iterate(run: Path) -> RunView:
    """Every iteration's feedback run (prompt keys ``it<i>/<id>``), the report rows and the
    per-iteration feedback numbers (with the sandbox ground truth where the prompts carry it)."""
    view = RunView("iterate", run)
    iterations: list[dict[str, Any]] = []
    merged: dict[str, Any] = {}
    for i, d in iteration_dirs(run):
        if not (d / "feedback").is_dir():
            view.notes.append(f"iteration {i}: no feedback folder yet")
            continue
        sub = collect_feedback(d / "feedback", iteration=i)
        view.prompts += sub.prompts
        view.images.update(sub.images)
        view.notes += [f"iteration {i}: {n}" for n in sub.notes]
        sel = read_json(d / "selection.json", None)
        iterations.append({"iteration": i, "summary": sub.summary, "done": (d / "done.json").exists(),
                           "selected": sel.get("selected") if isinstance(sel, dict) else None})
        _merge(merged, sub.plot_data)
    if not iterations and not (run / "report.json").exists():
        raise ReportError(f"{run}: an iterate run with no finished feedback yet (no iter-*/feedback/, no report.json)")
    rows = _rows_of(run)
    view.summary = {"kind": "iterate", "rows": rows, "iterations": iterations, "prompts": len(view.prompts)}
    view.plot_data = {**merged, "rows": rows,
                      "truth": [{"iteration": it["iteration"], **it["summary"]["truth"]} for it in iterations if it["summary"].get("truth")],
                      "feedback": [{"iteration": it["iteration"], "rejection_rate": it["summary"]["rejection_rate"],
                                    "pairs": it["summary"]["pair_points"]["final"]} for it in iterations]}
    return view


def _merge(into: dict[str, Any], data: dict[str, Any]) -> None:
    """Add one iteration's plot data to the run's (histograms over every iteration)."""
    for k, v in data.items():
        if isinstance(v, dict):  # gaps {point: [...]}, lengths {point: [[chosen...], [rejected...]]}
            d = into.setdefault(k, {})
            for point, x in v.items():
                d[point] = _concat(d.get(point), x)
        elif isinstance(v, list):
            into[k] = into.get(k, []) + v
        else:
            into.setdefault(k, v)


def _concat(a: list | None, b: list) -> list:
    """Concatenate lists, element-wise when both are lists of lists (chosen / rejected lengths)."""
    if a is None:
        return list(b)
    if b and isinstance(b[0], list):
        return [x + y for x, y in zip(a, b)]
    return a + b


# ----------------------------------------------------------------------------- best-of-n


def _result_rows(folder: Path) -> list[dict[str, Any]]:
    """The best-of-n result records of ``run/results`` as plain rows, in write order."""
    rows = []
    for _, _, path in _list_shards(folder):
        for n, row in jsonl_rows(path, partial_tail_ok=True):
            for key in ("prompt_id", "scorer", "chosen_index", "candidates"):
                if key not in row:
                    raise ReportError(f"{path}:{n}: a best-of-n record without {key!r}")
            rows.append(row)
    return rows


def ranks(scores: list[float]) -> list[int]:
    """1 = best: higher scores first, ties to the lower candidate index (as ``pick_best``)."""
    order = sorted(range(len(scores)), key=lambda k: (-scores[k], k))
    out = [0] * len(scores)
    for r, k in enumerate(order, 1):
        out[k] = r
    return out


def _bon_entry(row: dict[str, Any], question: str | None) -> dict[str, Any]:
    cands = row["candidates"]
    scorers = list(dict.fromkeys(s for c in cands for s in (c.get("scores") or {})))
    by = {s: ranks([float((c.get("scores") or {}).get(s, float("-inf"))) for c in cands]) for s in scorers}
    out = []
    for k, c in enumerate(cands):
        claims = [{"id": f"{c.get('candidate_id', k)}/{i}", "t": t, "v": "rej" if rej else "acc"}
                  for i, (t, rej) in enumerate(zip(c.get("claims") or [], c.get("rejected") or []))]
        out.append({"k": c.get("sample_index", k), "id": c.get("candidate_id", f"{row['prompt_id']}#{k}"), "text": c.get("text", ""),
                    "words": len(str(c.get("text", "")).split()), "trunc": c.get("truncated"), "claims": claims,
                    "score": (c.get("scores") or {}).get(row["scorer"]), "scores": c.get("scores") or {},
                    "ranks": {s: by[s][k] for s in scorers}, "mismatch": None, "rejects": []})
    return {"key": row["prompt_id"], "id": row["prompt_id"], "it": None, "q": question or row.get("question"), "pairs": [],
            "rejects": [], "cands": out, "bon": {"scorer": row["scorer"], "chosen": row["chosen_index"], "scorers": scorers},
            "flags": ["truncated"] if any(c["trunc"] for c in out) else []}


def collect_bestofn(run: Path) -> RunView:
    """Each prompt's N candidates ranked by every scorer; the chosen one; agreement between scorers."""
    view = RunView("best-of-n", run)
    prompts, base = read_prompts(run, view.notes, "results")
    rows = _result_rows(run / "results")
    rejects = read_rejects(run / "results")
    for row in rows:
        p = prompts.get(row["prompt_id"])
        entry = _bon_entry(row, p.question if p else None)
        view.prompts.append(entry)
        if p is not None:
            view.images[entry["key"]] = ((base / p.image) if p.image and base is not None else None, p.image_bytes)
    done = {r["prompt_id"] for r in rows}
    for r in rejects:
        pid = r.get("id")
        if isinstance(pid, str) and pid not in done:
            done.add(pid)
            p = prompts.get(pid)
            view.prompts.append({"key": pid, "id": pid, "it": None, "q": p.question if p else None, "pairs": [], "cands": [],
                                 "rejects": [{"stage": "best-of-n", "reason": str(r.get("reason", "")), "id": pid}], "flags": ["rejects"]})
    view.summary = {"kind": "best-of-n", "prompts": len(view.prompts), "results": len(rows), "summary": read_json(run / "summary.json", {}),
                    "rejects": len(rejects), "reasons": reason_counts(rejects), "agreement": agreement(view.prompts)}
    view.plot_data = {"chosen_index": [e["bon"]["chosen"] for e in view.prompts if "bon" in e]}
    return view


def agreement(entries: list[dict[str, Any]]) -> dict[str, float]:
    """Per scorer: the share of prompts whose best candidate under it is the one chosen."""
    hits: dict[str, int] = {}
    n = 0
    for e in entries:
        if "bon" not in e:
            continue
        n += 1
        for s in e["bon"]["scorers"]:
            best = next(k for k, c in enumerate(e["cands"]) if c["ranks"][s] == 1)
            hits[s] = hits.get(s, 0) + (best == e["bon"]["chosen"])
    return {s: h / n for s, h in hits.items()} if n else {}

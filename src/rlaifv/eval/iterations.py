"""The per-iteration report of ``rlaifv iterate`` / ``rlaifv demo``: Markdown, JSON and a PNG plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .report import write_json

#: (row key, column title) of the per-iteration table, in order.
COLUMNS = (("iteration", "iteration"), ("chair_s", "CHAIR_s"), ("chair_i", "CHAIR_i"), ("recall", "recall"),
           ("pope_f1", "POPE F1"), ("attr_err", "attr. err"), ("avg_length", "avg len (words)"), ("pairs", "pairs"),
           ("seconds", "wall s"), ("selected", "next policy"))
#: iterate's labeler-judged selection numbers (on a user's prompts: no sandbox metrics), shown when a row has them
LABELER_COLUMNS = (("hallucination_rate", "halluc. rate (labeler)"), ("claims_per_answer", "claims/answer"))


def columns(rows: Sequence[dict[str, Any]]) -> tuple[tuple[str, str], ...]:
    """The table's columns: ``COLUMNS``, plus the labeler-judged ones when a row has them (then
    without the sandbox metrics if no row has those)."""
    if not any("hallucination_rate" in r for r in rows):
        return COLUMNS
    sandbox = COLUMNS[1:-3] if any("chair_i" in r for r in rows) else ()
    return COLUMNS[:1] + sandbox + LABELER_COLUMNS + COLUMNS[-3:]


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a GitHub Markdown table (sampled descriptions; POPE F1 = mean of the splits)."""
    cols = columns(rows)
    head = "| " + " | ".join(t for _, t in cols) + " |\n|" + "---|" * len(cols) + "\n"
    return head + "".join("| " + " | ".join(_fmt(r.get(k)) for k, _ in cols) + " |\n" for r in rows)


def plot(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """CHAIR_i, CHAIR_s and recall per iteration (iteration 0 = the starting policy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["iteration"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    series = (("chair_i", "CHAIR_i", "o-"), ("chair_s", "CHAIR_s", "s-"), ("recall", "object recall", "^--"))
    if not any("chair_i" in r for r in rows) and any("hallucination_rate" in r for r in rows):  # a user's prompts
        series = (("hallucination_rate", "rejected claims (labeler)", "o-"),)
        title = title or "labeler-judged hallucination rate per iteration (held-out prompts)"
    for key, label, style in series:
        ax.plot(xs, [r.get(key) for r in rows], style, label=label)
    ax.set_xlabel("iteration (0 = starting policy)")
    ax.set_xticks(xs)
    ax.set_ylim(0, 1)
    ax.set_title(title or "hallucination and recall per iteration (sampled, held-out scenes)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(rows: Sequence[dict[str, Any]], out: Path) -> dict[str, Path]:
    """``out/report.{json,md,png}``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    md = out / "report.md"
    tmp = md.with_name(md.name + ".tmp")
    tmp.write_text(markdown_table(rows))
    tmp.replace(md)
    paths = {"json": write_json(out / "report.json", list(rows)), "md": md}
    paths["png"] = plot(rows, out / "report.png")
    return paths


def false_mention_rate(row: dict[str, Any]) -> float | None:
    """Share of object mentions that are false in any way: an absent object (CHAIR_i) or a present
    one with a wrong colour, size or cell (``attr_err``, whose denominator is the correct
    mentions): ``chair_i + attr_err * (1 - chair_i)``. This is what a claim-level labeler judges;
    CHAIR_i alone counts only the absent objects. None without both numbers."""
    ci, ae = row.get("chair_i"), row.get("attr_err")
    return None if ci is None or ae is None else ci + ae * (1 - ci)


def summarize(runs: Sequence[Path], keys: Sequence[str] = ("chair_s", "chair_i", "recall", "pope_f1", "attr_err", "false_mentions",
                                                           "avg_length", "pairs", "seconds")) -> list[dict[str, Any]]:
    """Mean and sample standard deviation over several runs' ``report.json``, per iteration.

    Rows: ``{"iteration": i, "runs": n, "<key>": mean, "<key>_std": std}`` for iterations that
    every run has; ``false_mentions`` is derived per run (:func:`false_mention_rate`).
    """
    import json
    import statistics

    reports = [json.loads((Path(r) / "report.json").read_text()) for r in runs]
    for rep in reports:
        for row in rep:
            row.setdefault("false_mentions", false_mention_rate(row))
    if not reports:
        raise ValueError("no runs to summarize")
    n_iter = min(len(r) for r in reports)
    out: list[dict[str, Any]] = []
    for i in range(n_iter):
        row: dict[str, Any] = {"iteration": reports[0][i]["iteration"], "runs": len(reports)}
        for k in keys:
            vals = [r[i].get(k) for r in reports if r[i].get(k) is not None]
            if vals:
                row[k] = statistics.fmean(vals)
                row[k + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out.append(row)
    return out


def summary_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The summary as Markdown: mean ± std per column."""
    cols = [(k, t) for k, t in COLUMNS if k not in ("iteration", "selected")]
    cols.insert(next(i for i, (k, _) in enumerate(cols) if k == "attr_err") + 1, ("false_mentions", "false mentions"))
    head = "| iteration | " + " | ".join(t for _, t in cols) + " |\n|" + "---|" * (len(cols) + 1) + "\n"

    def cell(r: dict[str, Any], k: str) -> str:
        if k not in r:
            return "-"
        digits = 1 if k in ("pairs", "seconds", "avg_length") else 3
        return f"{r[k]:.{digits}f} ± {r[k + '_std']:.{digits}f}"

    return head + "".join(f"| {r['iteration']} | " + " | ".join(cell(r, k) for k, _ in cols) + " |\n" for r in rows)


if __name__ == "__main__":  # python -m rlaifv.eval.iterations RUN [RUN ...]
    import sys

    print(summary_markdown(summarize([Path(a) for a in sys.argv[1:]])), end="")

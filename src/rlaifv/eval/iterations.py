"""The per-iteration report of ``rlaifv iterate`` / ``rlaifv demo``: Markdown, JSON and a PNG plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .report import write_json

#: (row key, column title) of the per-iteration table, in order.
COLUMNS = (("iteration", "iteration"), ("chair_s", "CHAIR_s"), ("chair_i", "CHAIR_i"), ("recall", "recall"),
           ("pope_f1", "POPE F1"), ("avg_length", "avg len (words)"), ("pairs", "pairs"), ("seconds", "wall s"))


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a GitHub Markdown table (sampled descriptions; POPE F1 = mean of the splits)."""
    head = "| " + " | ".join(t for _, t in COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    return head + "".join("| " + " | ".join(_fmt(r.get(k)) for k, _ in COLUMNS) + " |\n" for r in rows)


def plot(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """CHAIR_i, CHAIR_s and recall per iteration (iteration 0 = the starting policy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["iteration"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label, style in (("chair_i", "CHAIR_i", "o-"), ("chair_s", "CHAIR_s", "s-"), ("recall", "object recall", "^--")):
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

"""``rlaifv report RUN``: a claim-level HTML report of a feedback, iterate or best-of-n run.

Read-only on the run. ``collect.py`` / ``runs.py`` / ``loops.py`` read the run folder into a
:class:`~rlaifv.report.collect.RunView` (per prompt: image, question, candidates with their
claims, verdicts, p_yes / p_no, the asked questions, scores, pairs and flags; a run summary),
``plots.py`` draws the figures beside the page, ``summary.py`` and ``html.py`` write one
self-contained page (no server, no network; prompts rendered page by page from compressed
embedded data, see ``html.py``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .collect import ReportError, RunView

__all__ = ["ReportError", "RunView", "build_report", "collect_run"]


def collect_run(run: str | Path) -> RunView:
    """The view of any run folder (its kind detected; ReportError for a folder that is not a run)."""
    from .loops import collect_bestofn, collect_iterate
    from .runs import collect_feedback, detect_kind

    run = Path(run)
    kind = detect_kind(run)
    return {"feedback": collect_feedback, "iterate": collect_iterate, "best-of-n": collect_bestofn}[kind](run)


def build_report(run: str | Path, out: str | Path | None = None, images: str = "auto", page_size: int = 20) -> dict[str, Any]:
    """Write the report of ``run`` to ``out`` (default ``RUN/report.html``) and its figures to
    ``<out stem>-plots/``; returns {path, plots, prompts, bytes, seconds, images, notes}."""
    from .html import attach_images, page, _plots_html
    from .plots import write_plots
    from .summary import summary_html

    t0 = time.perf_counter()
    if page_size < 1:
        raise ReportError(f"--page-size must be >= 1, got {page_size}")
    view = collect_run(run)
    path = Path(out) if out else Path(run) / "report.html"
    if path.is_dir():
        raise ReportError(f"--out {path} is a folder; give a file name such as {path / 'report.html'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    counts = attach_images(view, images, path.parent)
    plots, skipped = write_plots(view.kind, view.plot_data, path.parent / f"{path.stem}-plots")
    warnings = list(view.summary.get("warnings", []))
    body = summary_html(view.kind, view.summary, warnings, view.notes, _plots_html(plots, skipped, path.parent), counts)
    title = f"rlaifv report: {Path(run).resolve().name}"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page(view, body, title, page_size), encoding="utf-8")
    tmp.replace(path)
    return {"path": path, "kind": view.kind, "plots": [p for _, p in plots], "prompts": len(view.prompts), "bytes": path.stat().st_size,
            "seconds": round(time.perf_counter() - t0, 2), "images": counts, "notes": view.notes}

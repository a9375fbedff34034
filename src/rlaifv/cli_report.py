"""``rlaifv report RUN``: the claim-level HTML report of a run folder (``report/``), registered
on the one ``rlaifv`` app (``cli.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .cli import UserError, app, console


@app.command("report")
def report_cmd(
    run: Path = typer.Argument(..., help="A run folder: `rlaifv feedback`, `rlaifv iterate` or `rlaifv best-of-n` output."),
    out: Optional[Path] = typer.Option(None, help="The HTML file to write (default RUN/report.html); figures go to <name>-plots/ beside it."),
    images: str = typer.Option("auto", help="embed (thumbnails inside the page) | link (paths relative to the page) | auto (embed up to 1000 prompts)."),
    page_size: int = typer.Option(20, help="Prompts per page (the page renders one page at a time)."),
) -> None:
    """Write one self-contained HTML page showing what the labeler decided: every prompt's candidates with
    their claims coloured by verdict (p_yes / p_no / mass), pairs side by side, flags and a run summary."""
    from rich.markup import escape

    from .report import ReportError, build_report

    try:
        res = build_report(run, out, images=images, page_size=page_size)
    except ReportError as e:
        raise UserError(str(e)) from e
    size = res["bytes"] / 1e6
    console.print(f"report of a {res['kind']} run ({res['prompts']} prompts): {res['path']} ({size:.2f} MB, {res['seconds']} s)", soft_wrap=True)
    console.print(f"figures: {res['plots'][0].parent if res['plots'] else 'none (no data to plot)'}", soft_wrap=True)
    if res["images"]["missing"]:
        console.print(f"[yellow]{res['images']['missing']} prompt image(s) missing or unreadable (marked in the page)[/]")
    for note in res["notes"]:
        console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)

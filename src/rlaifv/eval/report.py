"""Printing and saving evaluation results: a rich table for people, JSON for machines."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table


def _cell(value: Any, digits: int) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return "" if value is None else str(value)


def print_table(
    title: str,
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str] | None = None,
    console: Console | None = None,
    digits: int = 3,
) -> Table:
    """Print ``rows`` (dicts) as a table with the given ``columns`` (missing keys are blank).

    Floats are shown with ``digits`` decimals; numeric columns are right-aligned. Returns the
    table so that callers (and tests) can reuse it. ``columns=None`` takes every key of the
    rows in first-seen order.
    """
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    table = Table(title=title)
    for col in columns:
        numeric = any(isinstance(r.get(col), (int, float)) and not isinstance(r.get(col), bool) for r in rows)
        table.add_column(col, justify="right" if numeric else "left")
    for r in rows:
        table.add_row(*(_cell(r.get(col), digits) for col in columns))
    (console or Console()).print(table)
    return table


def _default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented UTF-8 JSON (dataclasses, sets and paths converted), creating
    parent directories; written to a temporary file first so a crash leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=_default) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path

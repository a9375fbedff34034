"""Progress bars for long work (rich), usable as a plain ``callback(done, total, message)``,
and ``say`` for the one-line notes a stage prints around them ("resuming: 3 of 8 done")."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from rich import get_console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

ProgressFn = Callable[[int, int, str], None]


@contextmanager
def progress_bar(description: str, enabled: bool = True) -> Iterator[ProgressFn]:
    """Yield a callback that drives one rich progress bar; a new ``total`` starts a new bar."""
    if not enabled:
        yield lambda done, total, msg="": None
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[msg]}"))
    with Progress(*columns, transient=False) as prog:
        state: dict[str, int] = {}

        def update(done: int, total: int, msg: str = "") -> None:
            if state.get("total") != total or "task" not in state or done < state.get("done", 0):
                state["task"] = prog.add_task(description, total=total, msg=msg)
                state["total"] = total
            state["done"] = done
            prog.update(state["task"], completed=done, msg=msg)

        yield update


def say(message: str, enabled: bool = True) -> None:
    """Print one note on the console the progress bars use (no markup read into it; "" prints nothing)."""
    if enabled and message:
        get_console().print(escape(message), soft_wrap=True)

"""The progress display of distill's long jobs (evaluation, teacher scoring): one rich layout.

A description, a bar, done/total and the elapsed time; with ``rate_unit``, also the rate and the
time remaining (``task.fields["rate"]`` holds the rate the caller measures). Hidden when ``show``
is false; ``transient`` displays vanish when done.
"""

from __future__ import annotations

from typing import Any


def progress_display(show: bool = True, *, transient: bool = True, rate_unit: str | None = None,
                     stderr: bool = True) -> Any:
    """A ``rich.progress.Progress`` (rich is imported here, on first use)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn()]
    if rate_unit is not None:
        columns += [TextColumn(f"{{task.fields[rate]}} {rate_unit}/s"), TextColumn("ETA"), TimeRemainingColumn()]
    return Progress(*columns, console=Console(stderr=True) if stderr else None, transient=transient, disable=not show)

"""The progress display of distill's long jobs (evaluation, teacher scoring): one rich layout.

A description, a bar, done/total and the elapsed time; with ``rate_unit``, also the rate and the
time remaining (``task.fields["rate"]`` holds the rate the caller measures). Hidden when ``show``
is false; ``transient`` displays vanish when done.
"""

from __future__ import annotations

from typing import Any

_THIRD_PARTY = {"shown": True}  # a library's default; distill's CLI shows them only with --verbose


def show_third_party_progress(shown: bool) -> None:
    """Whether other libraries may draw their own progress bars where distill can tell them not to (NNCF's,
    which no setting of NNCF's own turns off)."""
    _THIRD_PARTY["shown"] = shown


def third_party_progress_shown() -> bool:
    """See :func:`show_third_party_progress`."""
    return _THIRD_PARTY["shown"]


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

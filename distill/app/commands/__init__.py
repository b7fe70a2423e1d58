"""CLI command groups; each module defines ``register(app)``."""

from __future__ import annotations

import importlib

import typer

# Modules are listed here once they exist; each adds its commands to the app.
# the most torch threads an option accepts: torch.set_num_threads overflows on a C int, and no
# machine distill runs on has more cores
MAX_THREADS = 1024

MODULES = ("data", "teacher", "train", "student", "evaluate", "cascade", "demo", "serve", "queries", "fusion", "export")


def parse_ints(text: str, option: str) -> list[int]:
    """A comma-separated list of integers from the command line (``--cutoffs 5,10,20``)."""
    from distill.core.errors import ConfigError

    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"expected comma-separated integers, got {text!r}", field=option) from None


def positive(value: float | None) -> float | None:
    """An option callback refusing zero and negative values (typer's ``min=`` allows its bound)."""
    if value is not None and not value > 0:
        raise typer.BadParameter(f"must be > 0, got {value}")
    return value


def register_all(app: typer.Typer) -> None:
    for name in MODULES:
        importlib.import_module(f"distill.app.commands.{name}").register(app)

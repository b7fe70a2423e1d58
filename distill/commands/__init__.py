"""CLI command groups; each module defines ``register(app)``."""

from __future__ import annotations

import importlib

import typer

# Modules are listed here once they exist; each adds its commands to the app.
MODULES = ("data", "teacher", "train", "evaluate", "cascade", "demo")


def register_all(app: typer.Typer) -> None:
    for name in MODULES:
        importlib.import_module(f"distill.commands.{name}").register(app)

"""The ``distill`` command line.

Each group of commands lives in ``distill/commands/<name>.py`` and registers itself on
:data:`app`; heavy libraries are imported inside the commands so ``distill --help`` is instant.
A :class:`~distill.errors.DistillError` is printed as one line and exits with code 2
(``--debug`` shows the traceback).
"""

from __future__ import annotations

import logging
import os
import sys

import typer
from rich.console import Console
from rich.logging import RichHandler

from distill.errors import DistillError

app = typer.Typer(
    name="distill",
    help="Knowledge distillation of search rerankers: teacher cache, students, reports, cascades.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(stderr=True)
_state = {"debug": False}


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors."),
) -> None:
    _state["debug"] = debug
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(console=err_console, show_path=False)], force=True)
    for noisy in ("httpx", "urllib3", "filelock", "sentence_transformers", "transformers", "numba"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.WARNING)


_registered: list[bool] = []


def register_commands() -> None:
    """Add every command group to :data:`app` (once)."""
    if not _registered:
        from distill.commands import register_all

        register_all(app)
        _registered.append(True)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    register_commands()
    try:
        app(standalone_mode=False)
    except DistillError as err:
        if _state["debug"]:
            raise
        err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]: finished batches are kept; rerun to resume")
        sys.exit(130)
    except Exception as err:  # click's own usage errors carry an exit code
        import click

        if isinstance(err, click.exceptions.ClickException):
            err.show()
            sys.exit(err.exit_code)
        if isinstance(err, click.exceptions.Exit):
            sys.exit(err.exit_code)
        if isinstance(err, click.exceptions.Abort):
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()

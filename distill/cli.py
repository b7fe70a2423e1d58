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
    # markdown keeps "[default: ...]" and "[the model's own]" in help texts, which rich markup eats as tags
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(stderr=True)
_state = {"debug": False}


# third-party loggers that speak at INFO/DEBUG (or print model-loading reports) on every run
NOISY_LOGGERS = ("httpx", "urllib3", "filelock", "sentence_transformers", "transformers", "numba", "bm25s",
                 "datasets", "huggingface_hub", "accelerate", "torch", "lightgbm", "ray", "uvicorn")
# progress bars other libraries draw (transformers' "Loading weights", datasets' "Map"), read at their import
QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
             "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "TRANSFORMERS_VERBOSITY": "error",
             "TOKENIZERS_PARALLELISM": "false"}


OWN_LOGGERS = ("distill", "teachers", "students", "scripts", "__main__")


class _ThirdPartyFilter(logging.Filter):
    """Let other libraries' records through only from ``level`` up, whatever level they set on
    their own loggers at import (bm25s sets DEBUG on its logger)."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        own = record.name.split(".", 1)[0] in OWN_LOGGERS
        return own or record.levelno >= self.level


def configure_logging(*, debug: bool = False, verbose: bool = False, quiet: bool = False) -> None:
    """distill's own messages through rich; third-party logs and bars only with ``verbose``/``debug``.

    Libraries' expected notices (a new classification head, weight-loading bars, bm25s' index
    building) would otherwise interleave with distill's progress bars; distill says what matters
    in its own words.
    """
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    third_party = logging.DEBUG if debug else logging.INFO if verbose else logging.ERROR
    handler = RichHandler(console=err_console, show_path=False)
    handler.addFilter(_ThirdPartyFilter(logging.DEBUG if debug or verbose else max(level, third_party)))
    logging.basicConfig(level=level, format="%(message)s", datefmt="[%X]", handlers=[handler], force=True)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(third_party)
    if not (debug or verbose):
        for name, value in QUIET_ENV.items():
            os.environ.setdefault(name, value)
        if "transformers" in sys.modules:  # imported already: its level and bars were set at import
            sys.modules["transformers"].utils.logging.set_verbosity_error()
            sys.modules["transformers"].utils.logging.disable_progress_bar()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and every library's debug logs."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show third-party logs and progress bars."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors."),
) -> None:
    _state["debug"] = debug
    configure_logging(debug=debug, verbose=verbose, quiet=quiet)


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

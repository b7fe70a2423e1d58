"""The ``distill`` command line.

Each group of commands lives in ``distill/app/commands/<name>.py`` and registers itself on
:data:`app`; heavy libraries are imported inside the commands so ``distill --help`` is instant.
A :class:`~distill.core.errors.DistillError` is printed as one line and exits with code 2
(``--debug`` shows the traceback).
"""

from __future__ import annotations

import logging
import os
import sys

import typer
from rich.console import Console
from rich.logging import RichHandler

from distill.core.errors import DistillError
from distill.core.io import NO_ROOM
from distill.core.progress import show_third_party_progress
from distill.training.distributed import quiet_other_ranks

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
             "TOKENIZERS_PARALLELISM": "false",
             # torch sets its own loggers' levels when imported (after distill set them), from this
             # variable: its ONNX exporter would warn "torchvision is not installed" on every export
             "TORCH_LOGS": "-torch,-onnx",
             # tqdm bars libraries open on their own (sentence-transformers' "Computing widget examples")
             "TQDM_DISABLE": "1"}


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
    show_third_party_progress(debug or verbose)
    if not (debug or verbose):
        for name, value in QUIET_ENV.items():
            os.environ.setdefault(name, value)
        if "transformers" in sys.modules:  # imported already: its level and bars were set at import
            sys.modules["transformers"].utils.logging.set_verbosity_error()
            sys.modules["transformers"].utils.logging.disable_progress_bar()
    quiet_other_ranks()  # under torchrun, rank 0 alone speaks


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and every library's debug logs."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show third-party logs and progress bars."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors."),
) -> None:
    _state["debug"] = debug
    configure_logging(debug=debug, verbose=verbose, quiet=quiet)


_registered: list[bool] = []
INTERRUPTED = 130  # the shell's code for a process ended by SIGINT (128 + 2)


def register_commands() -> None:
    """Add every command group to :data:`app` (once)."""
    if not _registered:
        from distill.app.commands import register_all

        register_all(app)
        _registered.append(True)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``); exits with the command's status.

    Whatever the input, a failure is one line on stderr (``--debug`` shows the traceback):
    bad input or options (a :class:`~distill.core.errors.DistillError`, a usage error such as a
    missing option or a value outside an option's range, an unusable path) exit with 2; an
    unexpected exception, a bug, exits with 1.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    register_commands()
    _state["debug"] = False  # set again by the callback; an earlier in-process call's --debug must not stick
    try:
        # outside standalone mode typer turns a Ctrl-C, and any typer.Exit, into a returned exit code
        code = app(args=argv, standalone_mode=False)
    except (KeyboardInterrupt, typer.Abort):
        code = INTERRUPTED
    except Exception as err:
        if _state["debug"]:
            raise
        code, message = describe_error(err)
        if message is None:  # a command group called without a command: its help is the answer
            err.show()
            sys.exit(0)
        err_console.print(f"[bold red]error:[/] {message}", markup=True, highlight=False, soft_wrap=True)
        sys.exit(code)
    if code == INTERRUPTED:
        err_console.print("[yellow]interrupted[/]: finished batches are kept; rerun to resume")
    if isinstance(code, int) and code:  # a command's own return value (None) is no exit code
        sys.exit(code)


def describe_error(err: Exception) -> tuple[int, str | None]:
    """The exit code and the one line a failure is reported as (None: show the error's help).

    typer >= 0.29 vendors click and raises its usage errors as :class:`typer.TyperException`
    (a bad value reaches them through pydantic, whose ValidationError is their cause).
    """
    from rich.markup import escape

    if isinstance(err, DistillError):
        return 2, escape(_one_line(str(err)))
    if isinstance(err, typer.TyperException):
        if type(err).__name__ == "NoArgsIsHelpError":
            return 0, None
        ctx = getattr(err, "ctx", None)  # click's usage errors carry their context; other TyperExceptions none
        where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        return 2, escape(_one_line(err.format_message()) + where)
    if isinstance(err, OSError) and err.filename is not None:  # a path given on the command line
        return 2, escape(f"{err.filename}: {err.strerror or _one_line(str(err))}")
    if isinstance(err, OSError) and err.errno in NO_ROOM:  # a write outside distill.core.io's (a library's own)
        return 2, escape(f"{(err.strerror or 'no room').lower()} while writing an output (free some space, rerun)")
    return 1, escape(f"unexpected {type(err).__name__}: {_one_line(str(err))} (a bug: rerun with --debug "
                     "for the traceback and report it)")


def _one_line(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":
    main()

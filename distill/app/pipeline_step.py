"""A pipeline step: one task call, and the ``distill`` command line that makes the same call.

A step holds only the call (a function of :mod:`distill.app.tasks`), its keyword arguments, the
command's name and what the command prints of the call's result; its command line (printed and
recorded for users to copy) is derived from the arguments by :func:`command_line`, so the two
cannot drift apart. ``tests/test_pipeline.py`` parses every derived command line with
the real CLI and checks that it calls the function with the step's arguments.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.cascade.search import BudgetShare, CascadeBuildConfig
from distill.evaluation.runner import EvaluateConfig

# keyword arguments whose option is not ``--`` + the name with ``-`` for ``_``; None: a positional argument
OPTIONS: dict[str, str | None] = {
    "runs": "--run", "stages": "--stage", "rankers": "--ranker", "feature_rankers": "--feature-ranker",
    "loss_params": "--loss-param", "scorers": "--scorer", "eval_dir": "--eval", "spec": None, "folders": None,
    "files": None,
}
# the fields of a settings object that its command spells out as options (those the pipeline sets; the
# others are left at the command's defaults, which are the object's)
CONFIG_FIELDS: dict[type, tuple[str, ...]] = {
    CascadeBuildConfig: ("threads", "latency_queries", "latency_k"),
    EvaluateConfig: ("k", "baseline", "teacher", "latency", "latency_queries", "threads"),
}


def command_line(command: str, kwargs: Mapping[str, Any]) -> list[str]:
    """The arguments of ``distill`` that make the call ``kwargs`` describe, in their order.

    ``command`` ("candidates", "cascade build") comes first, then each argument by one rule:
    ``max_length=128`` is ``--max-length 128`` (see :data:`OPTIONS` for other spellings); True
    is the bare flag and None or False nothing (the commands' defaults); a list repeats the option
    once per item; a dict repeats it as ``NAME=VALUE``; a settings object (:data:`CONFIG_FIELDS`)
    is its fields' options; a :class:`BudgetShare` is ``--budget-share STAGE=SHARE``. Strings and
    paths are written as they are, other values as JSON (``0.0002``, ``true``).
    """
    argv = command.split()
    for name, value in kwargs.items():
        argv += _arguments(name, value)
    return argv


def _arguments(name: str, value: Any) -> list[str]:
    """One keyword argument's part of a command line (see :func:`command_line`)."""
    if type(value) in CONFIG_FIELDS:
        return [a for key in CONFIG_FIELDS[type(value)] for a in _arguments(key, getattr(value, key))]
    if isinstance(value, BudgetShare):
        return ["--budget-share", f"{value.stage}={_text(value.share)}"]
    option = OPTIONS.get(name, "--" + name.replace("_", "-"))
    if value is None or value is False:
        return []
    if value is True:
        return [str(option)]
    if isinstance(value, Mapping):
        texts = [f"{key}={_text(item)}" for key, item in value.items()]
    elif isinstance(value, (list, tuple)):
        texts = [_text(item) for item in value]
    else:
        texts = [_text(value)]
    return [a for text in texts for a in ([text] if option is None else [option, text])]


def _text(value: Any) -> str:
    """A value as the command line writes it: a string or path as it is, anything else as JSON."""
    return str(value) if isinstance(value, (str, Path)) else json.dumps(value)


@dataclass
class Step:
    """One task call, the ``distill`` command that makes the same call (its :attr:`argv`, printed and
    recorded for users to copy), and the output whose existence means the step is done.

    ``show`` prints the call's result as the command does (a table of :mod:`distill.app.summaries`):
    the tasks print nothing, so the demo shows what each command would."""

    name: str
    command_name: str  # the ``distill`` command, e.g. "cascade build"
    call: Callable[..., Any]
    kwargs: dict[str, Any]
    output: Path | None = None
    show: Callable[[Any], None] | None = None
    # keyword arguments given by PipelineConfig.extra: not in argv, shown after it
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def argv(self) -> list[str]:
        """The command line's arguments after ``distill``, derived from :attr:`kwargs`."""
        return command_line(self.command_name, self.kwargs)

    def command(self) -> str:
        line = "distill " + " ".join(shlex.quote(a) for a in self.argv)
        return line + "".join(f"  # {k}={v!r}" for k, v in self.overrides.items())

    def bind(self, placeholder: str, value: Any) -> None:
        """Put ``value`` where the plan left ``placeholder`` (known only once earlier steps ran)."""
        self.kwargs = {k: value if v == placeholder else v for k, v in self.kwargs.items()}

    def resume(self) -> None:
        """Continue a model step from its last checkpoint (``--resume``)."""
        self.kwargs["resume"] = True

    def run(self) -> Any:
        """Make the call and print its result as the command does; returns the result."""
        result = self.call(**{**self.kwargs, **self.overrides})
        if self.show is not None:
            self.show(result)
        return result

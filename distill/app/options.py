"""Command-line options made from config dataclasses, so that each setting has one home.

A field of a config dataclass with ``metadata={"help": ...}`` is an option of the commands built
on that config: ``--field-name``, or the name its ``"option"`` metadata gives (``n_negatives`` is
``--negatives``), typed by the field's annotation (``T | None`` as ``T``, a ``Literal`` of strings
as ``str``), defaulting to the field's default, with the help text and any other
:func:`typer.Option` arguments the metadata holds (``min``, ``max``, ``rich_help_panel``, ...).
A field without a help text is no option. The command receives the options in its ``**settings``,
under the options' names, which are the field names, the dataclass's keyword arguments, unless an
``"option"`` renames them (:func:`option_fields` maps those back)::

    @app.command()
    @with_options(config_options(ServeConfig, threads={"max": MAX_THREADS}))
    def serve(spec: Path = typer.Argument(...), *, access_log: bool = typer.Option(False, help="..."),
              **settings: Any) -> None:
        run_server(spec, ServeConfig(**settings), access_log=access_log)

Adding an option is adding the field (with its help text) and the code that uses it. A command with
no config reads its options' defaults from the function doing its work (:func:`defaults`). Building the
options imports only the config's module, so a config that ``distill --help`` reads must live in a
module that imports no torch.
"""

from __future__ import annotations

import inspect
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, Field, fields
from typing import Any, Literal, TypeVar, Union

import typer

__all__ = ["config_options", "defaults", "option_fields", "with_options"]

Command = TypeVar("Command", bound=Callable[..., Any])

# the arguments of typer.Option a field's metadata (or an override) may hold
OPTION_ARGUMENTS = frozenset(inspect.signature(typer.Option).parameters) - {"default", "param_decls"}
OPTION = "option"  # the metadata key naming a field's option when it is not the field's name


def config_options(config: type, *, variant: str | None = None, panel: str | None = None,
                   shared: Mapping[str, Mapping[str, Any]] | None = None,
                   **overrides: Mapping[str, Any]) -> list[inspect.Parameter]:
    """One keyword-only typer option per field of the dataclass ``config`` with a help text, in field order.

    ``variant`` names another set of defaults kept in the fields' metadata (``"quick": 1``): a field
    with one defaults to None on the command line, the command resolves it, and its help says both
    values, ``Epochs at most [2; --quick 1].``. ``shared`` maps a field whose option also sets other
    configs' fields, with other defaults, to every config's default by a name for it (``{"lr": {"neural":
    2e-5, "lightgbm": 0.05}}``): the option defaults to None, so that each config keeps its own, and its
    help says them all, ``Learning rate [neural 2e-05; lightgbm 0.05].``. ``panel`` is the options'
    ``rich_help_panel`` unless a field sets its own. ``overrides`` maps a field name to
    :func:`typer.Option` arguments that only the command layer knows (a callback, a bound from
    ``distill.app.commands``); they win over the metadata.
    """
    shared = shared or {}
    unknown = {*overrides, *shared} - {f.name for f in fields(config)}
    if unknown:
        raise TypeError(f"{config.__name__} has no field(s) {sorted(unknown)}")
    options = []
    for f in fields(config):
        if "help" not in f.metadata:
            continue
        arguments = {key: value for key, value in f.metadata.items() if key in OPTION_ARGUMENTS}
        arguments.update(overrides.get(f.name, {}))
        if panel is not None:
            arguments.setdefault("rich_help_panel", panel)
        default = _default(f)
        if variant is not None and variant in f.metadata:
            shown = [_shown(default), f"--{variant} {_shown(f.metadata[variant])}"]
            arguments["help"], default = _with_defaults(arguments["help"], shown), None
        if f.name in shared:
            shown = [f"{name} {_shown(value)}" for name, value in shared[f.name].items()]
            arguments["help"], default = _with_defaults(arguments["help"], shown), None
        options.append(inspect.Parameter(_option_name(f), inspect.Parameter.KEYWORD_ONLY,
                                         annotation=_option_type(config, f),
                                         default=typer.Option(default, **arguments)))
    return options


def option_fields(*configs: type) -> dict[str, str]:
    """The options of the dataclasses ``configs`` (:func:`config_options`), each to the name of the field it sets:
    how a command's ``**settings`` become those configs' keyword arguments (``{"negatives": "n_negatives", ...}``)."""
    return {_option_name(f): f.name for config in configs for f in fields(config) if "help" in f.metadata}


def with_options(*options: Sequence[inspect.Parameter]) -> Callable[[Command], Command]:
    """Decorate a command taking ``**settings`` with the generated ``options`` (lists from :func:`config_options`).

    typer reads a command's parameters from its signature: the decorated command's is its own
    parameters with ``options`` put where its keyword-only ones start (after ``*``), so ``--help``
    lists them in that order. Put the decorator under ``@app.command()``.
    """

    def decorate(command: Command) -> Command:
        own = list(inspect.signature(command, eval_str=True).parameters.values())
        if not own or own[-1].kind is not inspect.Parameter.VAR_KEYWORD:
            raise TypeError(f"{command.__name__} must take **settings to receive its generated options")
        leading = [p for p in own[:-1] if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        trailing = [p for p in own[:-1] if p.kind is inspect.Parameter.KEYWORD_ONLY]
        generated = [option for group in options for option in group]
        parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in leading] + generated + trailing
        command.__signature__ = inspect.Signature(parameters)  # a name given twice is a ValueError here
        return command

    return decorate


def defaults(function: Callable[..., Any]) -> dict[str, Any]:
    """``function``'s parameters that have a default, by name: for a command with no config dataclass,
    whose options' defaults are those of the function doing its work (``defaults(tasks.run_candidates)["k"]``)."""
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _option_name(f: Field) -> str:
    """The name of the option a field with a help text makes, ``--name-like-this`` on the command line."""
    return f.metadata.get(OPTION, f.name)


def _default(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else ...


def _with_defaults(help_text: str, defaults: Sequence[str]) -> str:
    """``"Tokens per pair."``, ``["256", "--quick 128"]`` → ``"Tokens per pair [256; --quick 128]."``."""
    sentence = help_text.rstrip()
    end = "." if sentence.endswith(".") else ""
    return f"{sentence.removesuffix('.')} [{'; '.join(defaults)}]{end}"


def _shown(value: Any) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


def _option_type(config: type, f: Field) -> Any:
    """The type typer parses a field's option as."""
    hint = f.type
    if isinstance(hint, str):
        # a postponed annotation (``from __future__ import annotations``), resolved in the config's module as
        # typing.get_type_hints does; only this field's, so fields that are no options may name TYPE_CHECKING imports
        hint = eval(hint, vars(sys.modules[config.__module__]))  # noqa: S307
    if typing.get_origin(hint) in (Union, types.UnionType):
        kinds = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        hint = kinds[0] if len(kinds) == 1 else hint
    if typing.get_origin(hint) is Literal:
        return type(typing.get_args(hint)[0])
    return hint

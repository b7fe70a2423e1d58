"""Cascade spec files: their ranker paths belong to the spec's folder, and no spec contains itself.

A spec names its stages' rankers by path (a model folder, a cache, a run file, another spec).
:func:`spec_for_folder` writes each path absolute, and relative to the spec's folder
(``ranker_relative``); :func:`read_spec_file` takes the absolute path where it exists, else
the relative one from the spec's own folder (a tree moved elsewhere), else a relative
``ranker`` from the spec's folder, and only then from the working directory or a folder above
the spec's (a spec written before, with paths relative to the working directory of its run).
A spec that names itself as a stage, directly or through other specs, is an
:class:`~distill.core.errors.InputError` naming the cycle, not endless recursion.
:func:`spec_calibrations` reads the stages' calibrations of a ``distill-cascade/2`` spec.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from distill.core.errors import ConfigError, InputError
from distill.core.io import read_json
from distill.core.recorded_paths import resolve_recorded
from distill.evaluation.calibration import Calibration

FIRST_STAGE = "bm25"  # distill.rankers.loading.FIRST_STAGE: the run's own scores, no path
RELATIVE = "ranker_relative"  # a stage's ranker path relative to the spec's folder
_OPEN: ContextVar[tuple[Path, ...]] = ContextVar("distill_cascade_specs_open", default=())


@contextmanager
def read_spec_file(path: str | Path) -> Iterator[dict[str, Any]]:
    """The JSON body of the spec ``path``, its stages' ranker paths resolved against its folder; while
    the caller loads those rankers, reading ``path`` again (a cycle) raises :class:`InputError`."""
    path = Path(path)
    if not path.is_file():
        raise InputError("cascade spec not found", path=path)
    key, open_ = path.resolve(), _OPEN.get()
    if key in open_:
        chain = " -> ".join(p.name for p in (*open_[open_.index(key):], key))
        raise InputError(f"the cascade spec names itself as a stage (cycle: {chain})", path=path)
    body = read_json(path)
    token = _OPEN.set((*open_, key))
    try:
        yield _with_stages(body, lambda entry: _resolved(entry, path.parent))
    finally:
        _OPEN.reset(token)


def spec_for_folder(spec: dict[str, Any], folder: str | Path) -> dict[str, Any]:
    """``spec`` with each stage's existing ranker path written absolute, and again relative to ``folder``
    (where the spec is saved) as ``ranker_relative``: found from anywhere, and after the tree moved."""
    return _with_stages(spec, lambda entry: _recorded(entry, Path(folder)))


def _with_stages(spec: Any, change) -> Any:
    """``spec`` with ``change`` applied to each well-formed stage entry (validation is from_spec's)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("stages"), list):
        return spec
    stages = [change(entry) if isinstance(entry, dict) and isinstance(entry.get("ranker"), str) else entry
              for entry in spec["stages"]]
    return {**spec, "stages": stages}


def _resolved(entry: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A stage entry whose ranker is the path that exists (see :func:`distill.core.recorded_paths.resolve_recorded`:
    absolute, else relative to the spec's ``folder``, else an older spec's working directory's), else
    the ranker as given (a name a loader knows, or an error it reports)."""
    ranker, relative = entry["ranker"], entry.get(RELATIVE)
    entry = {k: v for k, v in entry.items() if k != RELATIVE}
    if ranker == FIRST_STAGE:
        return entry
    found = resolve_recorded({"path": ranker, "relative_path": relative if isinstance(relative, str) else None},
                             folder)
    return {**entry, "ranker": os.path.abspath(found)} if found is not None else entry


def _recorded(entry: dict[str, Any], folder: Path) -> dict[str, Any]:
    ranker = entry["ranker"]
    if ranker == FIRST_STAGE or not Path(ranker).exists():
        return entry
    try:
        relative = {RELATIVE: os.path.relpath(os.path.abspath(ranker), os.path.abspath(folder))}
    except ValueError:  # another drive (Windows): the absolute path only
        relative = {}
    return {**entry, "ranker": os.path.abspath(ranker), **relative}


def spec_calibrations(spec: dict[str, Any], entries: list[Any],
                      source: str | Path | None = None) -> dict[str, Calibration]:
    """The calibrations of a spec by stage name (``calibration``: stage name -> its JSON; a
    ``distill-cascade/1`` spec predates them); one that is malformed or names no stage is a :class:`ConfigError`."""
    found = spec.get("calibration") or {}
    if not isinstance(found, dict):
        raise ConfigError("expected an object of stage name -> calibration", path=source, field="calibration")
    names = {entry.get("name") for entry in entries if isinstance(entry, dict)}
    unknown = sorted(set(found) - names)
    if unknown:
        raise ConfigError(f"calibration of unknown stage(s) {unknown}", path=source, field="calibration")
    try:
        return {name: Calibration.from_json(body, field=f"calibration.{name}") for name, body in found.items()}
    except ConfigError as err:
        raise ConfigError(err.message, path=source, field=err.field) from None

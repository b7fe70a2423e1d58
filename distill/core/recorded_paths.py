"""Paths an output records (a model's training data, a cache's teacher) that resolve from anywhere.

A folder records a path twice: absolute (``path``), and relative to the folder itself
(``relative_path``), so a model finds its data from any working directory and after the
tree holding both was moved or copied elsewhere. Folders written before recorded one path,
relative to the working directory of their run (``"demo_out/data"``): it is tried from the
working directory, then from each folder above the output, where that run most likely was.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PATH, RELATIVE = "path", "relative_path"


def record_path(path: str | Path, folder: str | Path) -> dict[str, str]:
    """``{"path": absolute, "relative_path": from folder}`` for a manifest written into ``folder``."""
    absolute = Path(os.path.abspath(path))
    try:
        relative = os.path.relpath(absolute, os.path.abspath(folder))
    except ValueError:  # another drive (Windows): only the absolute path exists
        return {PATH: str(absolute)}
    return {PATH: str(absolute), RELATIVE: relative}


def rebase(record: Mapping[str, Any], folder: str | Path, source: str | Path) -> dict[str, Any]:
    """``record``, written for the folder ``source``, with its paths recorded anew for ``folder``, where a
    copy of ``source`` (a kept round, a chosen student) or an output made from it (an export) lives."""
    found = resolve_recorded(record, source)
    return {**record, **record_path(found, folder)} if found is not None else dict(record)


def resolve_recorded(record: Mapping[str, Any], folder: str | Path) -> Path | None:
    """The existing path ``record`` names for the output ``folder``: its absolute path, else the path relative
    to ``folder``, else (a record of one relative path) that path from ``folder``, from the working
    directory, then from each folder above ``folder``; None when none exists."""
    given = record.get(PATH)
    if not given:
        return None
    folder = Path(os.path.abspath(folder))
    candidates = [Path(given)] if Path(given).is_absolute() else []
    if record.get(RELATIVE):
        candidates.append(folder / record[RELATIVE])
    if not Path(given).is_absolute():
        candidates += [folder / given, Path(given), *(above / given for above in folder.parents)]
    return next((Path(os.path.normpath(c)) for c in candidates if c.exists()), None)

"""Where a command may write: distill never destroys what it did not write, nor its own inputs.

- A **folder** output (an evaluation, a model, a split view, a demo folder) replaces only an
  empty folder or an earlier output of distill of the same kind, recognised by the marker
  file its writer leaves there (:data:`MARKERS`). Anything else is refused unless the user
  passes ``overwrite`` (``--overwrite``).
- A **file** output may replace an existing file, but never one of the command's inputs.
- No output is, contains or lies inside an input dataset folder, and no folder output is or
  contains an input: ``overwrite`` does not lift these two.

Every writing command calls :func:`check_output` before it starts its work, so a refusal costs
nothing; :func:`distill.core.io.atomic_dir` checks the folder rule again when it writes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from distill.core.errors import InputError

# marker file -> the kind of output it marks (``distill.json`` says its own ``kind``)
MARKERS = {"view.json": "split-view", "pipeline.json": "pipeline"}
MANIFEST = "distill.json"
# a teacher cache (distill.cache) is marked by its own manifest; rankers recognise a cache folder by it
CACHE_MANIFEST, CACHE_KIND = "manifest.json", "teacher-cache"
SHOWN_FILES = 3  # a refusal names this many of the folder's files
OVERWRITE_HELP = ("Replace --out even when it holds files distill did not write (never an input, nor a folder "
                  "holding one).")


def output_kinds(folder: str | Path) -> list[str]:
    """Which distill outputs ``folder`` is: its manifest's ``kind`` and its markers' (a demo folder holds
    the pipeline's marker and the report's manifest); empty for a folder distill did not write."""
    folder = Path(folder)
    kinds = [kind for name, kind in MARKERS.items() if (folder / name).is_file()]
    manifest = folder / MANIFEST
    if manifest.is_file():
        try:
            kind = json.loads(manifest.read_text(encoding="utf-8")).get("kind")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            kind = None
        kinds += [kind] if isinstance(kind, str) else []
    return kinds


def check_folder_output(path: str | Path, kind: str | Sequence[str] | None, *, overwrite: bool = False) -> None:
    """Refuse (:class:`InputError`) to replace ``path`` unless it is absent, an empty folder or an output of
    ``kind`` (one of several; None: any distill output), or ``overwrite`` is given."""
    path = Path(path)
    if overwrite or not (path.exists() or path.is_symlink()):
        return
    if not path.is_dir():
        what = "is a file, not a folder distill wrote"
    else:
        entries = sorted(entry.name for entry in path.iterdir())
        if not entries:
            return
        found = output_kinds(path)
        wanted = (kind,) if isinstance(kind, str) else tuple(kind or ())
        if found and (not wanted or set(found) & set(wanted)):
            return
        shown = ", ".join(entries[:SHOWN_FILES]) + (", ..." if len(entries) > SHOWN_FILES else "")
        what = (f"holds a {found[-1]} output of distill, not a {' or '.join(wanted)}" if found
                else f"holds files distill did not write ({shown})")
    raise InputError(f"{what}; pass --overwrite to replace it, or choose another --out", path=path)


def check_folder(out: str | Path, kind: str | Sequence[str] | None, *, overwrite: bool = False,
                 inputs: Iterable[str | Path | None] = (), datasets: Iterable[str | Path | None] = ()) -> None:
    """Both rules for a folder output, checked before a command starts its work."""
    check_output(out, inputs=inputs, datasets=datasets, folder=True)
    check_folder_output(out, kind, overwrite=overwrite)


def check_output(out: str | Path, *, inputs: Iterable[str | Path | None] = (),
                 datasets: Iterable[str | Path | None] = (), folder: bool = False) -> None:
    """Refuse an output ``out`` that is one of ``inputs`` (files or folders the command reads), that lies
    inside, is or contains one of ``datasets`` (BEIR folders), or, for a ``folder`` output, contains an input."""
    target = _absolute(out)
    for dataset in filter(None, datasets):
        files = [Path(dataset) / "corpus.jsonl", Path(dataset) / "queries.jsonl", *Path(dataset).glob("qrels/*")]
        places = {_absolute(dataset), Path(dataset).resolve()}
        if any(target == p or p in target.parents or target in p.parents for p in places) or \
                any(_same(out, file) for file in files):
            raise InputError(f"is, contains or lies inside the input dataset {dataset}; choose another --out",
                             path=out)
    for given in filter(None, inputs):
        if not Path(given).exists():
            continue
        source = _absolute(given)
        if _same(out, given) or target == source or (folder and target in source.parents):
            raise InputError(f"would replace the command's own input {given}; choose another --out", path=out)


def _absolute(path: str | Path) -> Path:
    """``path`` made absolute with its folders resolved but not itself: a link is the link."""
    path = Path(os.path.abspath(path))
    return path.parent.resolve() / path.name


def _same(a: str | Path, b: str | Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False

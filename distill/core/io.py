"""Atomic file output: nothing half-written is ever visible under its final name.

A file or folder is written beside its final name, flushed to disk (``fsync``), renamed onto
it, and the folder holding it flushed too, so a crash or a power loss leaves either the old
output or the new one, never a torn file under the final name. A folder output replaces only
what :func:`distill.core.outputs.check_folder_output` allows. When the disk is full (or a quota or
the file size limit is hit) the temporary file is removed and one :class:`OutputError` names
the output: ``no space left on device: PATH``.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from distill.core.errors import DistillError, InputError
from distill.core.outputs import check_folder_output

# errors that mean "no room for this output", whichever call meets them (a write inside a writer's body)
NO_ROOM = {errno.ENOSPC, errno.EFBIG, *([errno.EDQUOT] if hasattr(errno, "EDQUOT") else [])}


class OutputError(DistillError):
    """An output could not be written (disk full, quota, file size limit, a rename refused)."""

    def __init__(self, reason: str, output: str | Path) -> None:
        self.reason, self.output = reason, str(output)
        super().__init__(f"{reason}: {output}")


@contextmanager
def _naming(path: Path, *, every: bool) -> Iterator[None]:
    """Report an OSError as an :class:`OutputError` naming ``path``: every one (distill's own renames and
    syncs), or (a writer's body, which may also read its inputs) only those that mean no room."""
    try:
        yield
    except OutputError as err:  # a file of a folder output: the folder is what the user named
        if err.output == str(path):
            raise
        raise OutputError(err.reason, path) from err
    except OSError as err:
        if not every and err.errno not in NO_ROOM:
            raise
        reason = err.strerror or " ".join(str(err).split())
        raise OutputError(reason[:1].lower() + reason[1:], path) from err


def _umask_mode(base: int) -> int:
    """``base`` permissions less the process umask (mkstemp/mkdtemp create 0o600/0o700)."""
    umask = os.umask(0)
    os.umask(umask)
    return base & ~umask


def fsync_path(path: str | Path) -> None:
    """Flush a file's data, or a folder's entries, to disk (folders where the system allows it)."""
    folder = os.path.isdir(path)
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if folder else 0))
    except OSError:
        if folder:  # Windows opens no folders; its renames need no folder sync
            return
        raise
    try:
        os.fsync(fd)
    except OSError as err:
        if not folder or err.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; flush it and rename it onto ``path`` only on success."""
    path = Path(path)
    tmp_path = None
    try:
        with _naming(path, every=True):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            tmp_path = Path(tmp)
        with _naming(path, every=False):
            yield tmp_path
        with _naming(path, every=True):
            os.chmod(tmp_path, _umask_mode(0o666))
            fsync_path(tmp_path)
            os.replace(tmp_path, path)
            fsync_path(path.parent)
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextmanager
def atomic_dir(path: str | Path, *, kind: str | Sequence[str] | None = None,
               overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` only on success.

    ``path`` may be absent, an empty folder or an earlier output of ``kind`` (None: any distill
    output); anything else is refused unless ``overwrite`` (see :mod:`distill.core.outputs`).
    """
    path = Path(path)
    restore_swapped(path)
    check_folder_output(path, kind, overwrite=overwrite)
    tmp = None
    try:
        with _naming(path, every=True):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        with _naming(path, every=False):
            yield tmp
        with _naming(path, every=True):
            os.chmod(tmp, _umask_mode(0o777))
            _fsync_tree(tmp)
            _swap(tmp, path)
            fsync_path(path.parent)
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    """Flush every file and folder below ``folder``, contents before the folder holding them (links are
    entries of their folder: what they point to is not this output)."""
    for root, _dirs, files in os.walk(folder, topdown=False):
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                fsync_path(os.path.join(root, name))
        fsync_path(root)


def restore_swapped(path: str | Path) -> bool:
    """Put back the earlier output that a crash between :func:`_swap`'s two renames left as ``.NAME.old``
    (``path`` itself then missing); True when it did."""
    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    if old.is_dir() and not (path.exists() or path.is_symlink()):
        os.replace(old, path)
        return True
    return False


def read_json(path: str | Path) -> Any:
    """A JSON file a user may have written by hand: a UTF-8 BOM is accepted, and a syntax error is an
    :class:`InputError` at ``file:line``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(f"not UTF-8 text ({err.reason} at byte {err.start})", path=path) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"unreadable JSON: {err.msg} (column {err.colno})", path=path, line=err.lineno) from None


def _swap(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` onto ``path``, moving an earlier ``path`` aside first and deleting it after."""
    if not (path.exists() or path.is_symlink()):
        os.replace(tmp, path)
        return
    old = path.with_name(f".{path.name}.old")
    _remove(old)
    os.replace(path, old)
    os.replace(tmp, path)
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()

"""The write lock of a teacher cache folder: one writer at a time, readers never wait.

Every write to a cache (a shard, a candidate set, the texts, a compaction, the manifest) runs
while its process holds an OS lock (``fcntl.flock`` through :mod:`filelock`) on the file
``.lock`` in the cache folder. The lock is held for one write, not for the life of an open
cache, so two ``score-teacher`` runs of the same teacher take turns shard by shard, and a
crashed holder's lock is released by the OS with its process. Readers take no lock: every
file appears under its final name only once complete, so what they see is always whole.

Since all temporary files are written under the lock, any ``.tmp`` file older than the
moment the lock was taken belongs to a writer that was killed; the new holder removes them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

LOCK = ".lock"
# Folders of a cache that hold atomically written files (their temporaries lie beside them).
TMP_FOLDERS = (".", "shards", "candidates")


class CacheLock:
    """The OS lock of one cache folder; :meth:`held` is re-entrant within a thread."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = None
        self._local = threading.local()

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lock for one write, creating the folder (and the lock file in it) if need be."""
        depth = getattr(self._local, "depth", 0)
        if depth:
            self._local.depth = depth + 1
            try:
                yield
            finally:
                self._local.depth = depth
            return
        from filelock import FileLock, Timeout

        self.folder.mkdir(parents=True, exist_ok=True)
        if self._lock is None:
            self._lock = FileLock(self.folder / LOCK)
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            log.info("%s: another process is writing this cache; waiting for its write to finish", self.folder)
            self._lock.acquire()
        self._local.depth = 1
        try:
            remove_stale_temporaries(self.folder, before=time.time())
            yield
        finally:
            self._local.depth = 0
            self._lock.release()


def stale_temporaries(folder: Path, before: float) -> list[Path]:
    """The ``.tmp`` files of the cache's folders last written before ``before`` (seconds since the epoch)."""
    found = []
    for name in TMP_FOLDERS:
        for path in sorted((folder / name).glob(".*.tmp")):
            try:
                if path.stat().st_mtime < before:
                    found.append(path)
            except FileNotFoundError:
                continue
    return found


def remove_stale_temporaries(folder: Path, before: float) -> int:
    """Remove what killed writers left half-written (call with the lock held); how many."""
    stale = stale_temporaries(folder, before)
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log.info("%s: removed %d temporary file(s) an interrupted writer left", folder, len(stale))
    return len(stale)

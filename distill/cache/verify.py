"""``distill cache verify [--repair]``: check every file of a teacher cache, and mend what a crash broke.

The check reads the manifest, every shard, every candidate file and the text registry, and
names each one that cannot be read or does not belong (a shard whose recorded teacher differs
from the manifest's, a candidate set the manifest lists but that is gone). ``--repair``, under
the cache's write lock, moves bad files into ``quarantine/`` (their pairs are then scored
again by the next ``score-teacher``), rebuilds a lost or broken manifest from the identity every
shard records in its Parquet metadata and from the candidate files, rebuilds the text registry
from the shards' hashes, and removes the temporary files of killed writers.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from distill.cache import files as cache_files
from distill.cache import texts as cache_texts
from distill.cache.files import FORMAT, MANIFEST, BadFile
from distill.cache.lock import CacheLock, stale_temporaries
from distill.core.errors import InputError
from distill.core.io import atomic_path, write_json_atomic

RECOVERED = "recovered by distill cache verify"


@dataclass
class CacheCheck:
    """What :func:`verify_cache` found: the readable files, and one line per problem."""

    folder: Path
    manifest: dict[str, Any] | None = None
    manifest_problem: str | None = None
    shards: dict[Path, dict[str, Any] | None] = field(default_factory=dict)  # readable shard -> its identity
    rows: int = 0
    candidates: dict[str, int] = field(default_factory=dict)  # readable candidate file's hash -> pairs
    bad: dict[Path, str] = field(default_factory=dict)  # file to set aside -> why
    registry_ok: bool = True
    unlisted: list[str] = field(default_factory=list)  # manifest entries whose file is gone
    temporaries: int = 0

    @property
    def problems(self) -> list[str]:
        lines = [f"{MANIFEST}: {self.manifest_problem}"] if self.manifest_problem else []
        lines += [f"{p.relative_to(self.folder)}: {why}" for p, why in self.bad.items()]
        lines += [f"candidates/{h}.parquet: listed in the manifest but missing" for h in self.unlisted]
        lines += [] if self.registry_ok else [f"{cache_texts.REGISTRY}: unreadable"]
        return lines


def check_cache(folder: str | Path) -> CacheCheck:
    """Read every file of the cache ``folder``; changes nothing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("no such cache folder", path=folder)
    check = CacheCheck(folder)
    try:
        check.manifest = cache_files.read_manifest(folder)
    except InputError as err:
        check.manifest_problem = err.message
    for path in cache_files.shard_files(folder):
        try:
            check.rows += cache_files.read_rows(path).height
            check.shards[path] = cache_files.shard_identity(path)
        except (BadFile, FileNotFoundError) as err:
            check.bad[path] = f"unreadable shard ({err})"
    if check.manifest is not None:
        for path, recorded in check.shards.items():
            if recorded is not None and recorded.get("teacher") != check.manifest["teacher"]:
                check.bad[path] = "shard of another teacher than the manifest's"
    for path in sorted((folder / "candidates").glob("*.parquet")):
        try:
            check.candidates[path.stem] = cache_files.read_pairs(path).height
        except (BadFile, FileNotFoundError) as err:
            check.bad[path] = f"unreadable candidate file ({err})"
    listed = [] if check.manifest is None else [c["hash"] for c in check.manifest.get("candidates", [])]
    check.unlisted = [h for h in listed if h not in check.candidates]
    if (folder / cache_texts.REGISTRY).exists():
        try:
            cache_files.read_registry_file(folder / cache_texts.REGISTRY)
        except BadFile:
            check.registry_ok = False
    check.temporaries = len(stale_temporaries(folder, before=time.time()))
    return check


def verify_cache(folder: str | Path, *, repair: bool = False) -> tuple[CacheCheck, list[str]]:
    """Check the cache ``folder``; with ``repair``, mend it under its write lock. Returns the check
    (after the repair, when asked) and one line per thing the repair did."""
    folder = Path(folder)
    if not repair or not folder.is_dir():
        return check_cache(folder), []
    if not (folder / MANIFEST).exists() and not (folder / "shards").is_dir():
        raise InputError("not a teacher cache (no manifest.json and no shards/)", path=folder)
    done: list[str] = []
    with CacheLock(folder).held():  # taking the lock removes the killed writers' temporary files
        check = check_cache(folder)
        for path, why in check.bad.items():
            cache_files.quarantine(folder, path, why, "file", "set aside by cache verify --repair")
            done.append(f"moved {path.relative_to(folder)} to {cache_files.QUARANTINE}/ ({why})")
        if not check.registry_ok:
            cache_files.quarantine(folder, folder / cache_texts.REGISTRY, "unreadable", "text registry",
                                   "rebuilt from the shards")
            _rebuild_registry(folder)
            done.append(f"rebuilt {cache_texts.REGISTRY} from the shards")
        good = {p: ident for p, ident in check.shards.items() if p not in check.bad}
        manifest = check.manifest if check.manifest is not None else _identity_from(folder, good)
        mended = _mend_candidates(folder, manifest, {h: n for h, n in check.candidates.items()
                                                     if folder / "candidates" / f"{h}.parquet" not in check.bad})
        if check.manifest is None or mended != check.manifest:
            write_json_atomic(folder / MANIFEST, mended)
            done.append(f"{'rebuilt' if check.manifest is None else 'updated'} {MANIFEST} "
                        f"({len(mended['candidates'])} candidate set(s))")
    return check_cache(folder), done


def _identity_from(folder: Path, shards: dict[Path, dict[str, Any] | None]) -> dict[str, Any]:
    """A manifest (without candidates) from the identity the readable shards record."""
    recorded = {p: ident for p, ident in shards.items() if ident is not None}
    if not recorded:
        why = "it holds no readable shard" if not shards else "no shard records its teacher (format 1 shards)"
        raise InputError(f"cannot rebuild manifest.json: {why}; start a new cache in another folder", path=folder)
    teachers = {json.dumps([i.get("teacher"), i.get("corpus_hash")], sort_keys=True) for i in recorded.values()}
    if len(teachers) > 1:
        raise InputError(f"cannot rebuild manifest.json: the shards record {len(teachers)} different teachers "
                         "or corpora; move the shards of all but one aside by hand", path=folder)
    newest = max(recorded, key=lambda p: p.stat().st_mtime)
    return {**recorded[newest], "format": FORMAT, "candidates": []}


def _mend_candidates(folder: Path, manifest: dict[str, Any], files: dict[str, int]) -> dict[str, Any]:
    """``manifest`` listing exactly the readable candidate files (keeping each known entry's source)."""
    entries = [c for c in manifest.get("candidates", []) if c["hash"] in files]
    listed = {c["hash"] for c in entries}
    entries += [{"hash": h, "pairs": n, "source": RECOVERED} for h, n in sorted(files.items()) if h not in listed]
    return {**manifest, "candidates": entries}


def _rebuild_registry(folder: Path) -> None:
    rows = [cache_files.read_rows(p) for p in cache_files.shard_files(folder)]
    registry = cache_texts.rebuild_registry(pl.concat(rows) if rows else pl.DataFrame(schema=cache_files.ROW_SCHEMA))
    with atomic_path(folder / cache_texts.REGISTRY) as tmp:
        registry.write_parquet(tmp, compression="zstd")

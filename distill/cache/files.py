"""Reading the files of a teacher cache without trusting them: the manifest is checked field by
field, and a shard or candidate file that cannot be read (torn by a power loss, emptied, not
Parquet) is named in one warning and moved into ``quarantine/``, so the pairs it held count as
unscored and the next run scores them again. The layout and the manifest's schema are in
:mod:`distill.cache.store`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import polars as pl

from distill.cache.lock import LOCK
from distill.cache.texts import DHASH, QHASH, REGISTRY, REGISTRY_SCHEMA
from distill.core.errors import CacheMismatchError, InputError
from distill.core.io import read_json
from distill.core.outputs import CACHE_KIND, CACHE_MANIFEST
from distill.core.schema import DOCID, QID, SCORE

log = logging.getLogger(__name__)

MANIFEST, KIND = CACHE_MANIFEST, CACHE_KIND
FORMAT = 2
QUARANTINE = "quarantine"
# Parquet key-value metadata of every shard: the cache's identity (manifest less its candidates),
# so `distill cache verify --repair` can rebuild a lost manifest from the shards.
IDENTITY_KEY = "distill.teacher_cache"
ROW_SCHEMA = {QID: pl.String, DOCID: pl.String, SCORE: pl.Float32, QHASH: pl.String, DHASH: pl.String}
PAIR_SCHEMA = {QID: pl.String, DOCID: pl.String}
# field -> the type it must have; the others are optional
REQUIRED = {"kind": str, "format": int, "teacher": dict}
OPTIONAL = {"candidates": list, "corpus_hash": (str, type(None)), "precision": dict}
REPAIR_HINT = "`distill cache verify --repair {folder}` rebuilds it from the shards"


def validate_manifest(manifest: Any, path: Path) -> dict[str, Any]:
    """``manifest`` if it is a teacher cache's of a format this distill reads; else an InputError naming the field."""
    if not isinstance(manifest, dict):
        raise InputError(f"manifest is not a JSON object; {REPAIR_HINT.format(folder=path.parent)}", path=path)
    for field, kind in {**REQUIRED, **OPTIONAL}.items():
        if field not in manifest:
            if field in REQUIRED:
                raise InputError(f"missing from the manifest; {REPAIR_HINT.format(folder=path.parent)}",
                                 path=path, field=field)
            continue
        if not isinstance(manifest[field], kind) or isinstance(manifest[field], bool):
            raise InputError(f"has type {type(manifest[field]).__name__}; "
                             f"{REPAIR_HINT.format(folder=path.parent)}", path=path, field=field)
    if manifest["kind"] != KIND:
        raise InputError(f"not a teacher cache (kind {manifest['kind']!r})", path=path, field="kind")
    if not 1 <= manifest["format"] <= FORMAT:
        raise InputError(f"cache format {manifest['format']} is not one this distill reads (1 to {FORMAT}); "
                         "a newer distill wrote it", path=path, field="format")
    for i, entry in enumerate(manifest.get("candidates", [])):
        if not isinstance(entry, dict) or not isinstance(entry.get("hash"), str):
            raise InputError(f"entry {i} has no 'hash'; {REPAIR_HINT.format(folder=path.parent)}",
                             path=path, field="candidates")
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    """The checked manifest of the cache ``folder``."""
    path = folder / MANIFEST
    if not path.is_file():
        hint = f"; {REPAIR_HINT.format(folder=folder)}" if shard_files(folder) else \
            "; create it with `distill score-teacher`"
        raise InputError(f"not a teacher cache (no manifest.json){hint}", path=folder)
    return validate_manifest(parse_manifest(path), path)


def parse_manifest(path: Path) -> Any:
    """The manifest file's JSON; unreadable, an :class:`InputError` at its line that says how to rebuild it."""
    try:
        return read_json(path)
    except InputError as err:
        raise InputError(f"{err.message}; {REPAIR_HINT.format(folder=path.parent)}", path=path, line=err.line) from None


def _diff(a: dict, b: dict) -> str:
    keys = sorted(set(a) | set(b))
    return "; ".join(f"{k}: cache has {a.get(k)!r}, asked {b.get(k)!r}" for k in keys if a.get(k) != b.get(k))


def check_identity(manifest: dict[str, Any], teacher: dict[str, Any], corpus_hash: str | None, folder: Path) -> None:
    if manifest["teacher"] != teacher:
        raise CacheMismatchError(
            f"cache holds scores of another teacher ({_diff(manifest['teacher'], teacher)}); "
            "use another cache folder", path=folder / MANIFEST, field="teacher",
        )
    have = manifest.get("corpus_hash")
    if have is not None and corpus_hash is not None and have != corpus_hash:
        raise CacheMismatchError(
            f"cache was built on another corpus (hash {have}, asked {corpus_hash})",
            path=folder / MANIFEST, field="corpus_hash",
        )


def check_new_folder(folder: Path) -> None:
    """A folder may become a new cache when it holds nothing but a lock file and empty cache folders."""
    if not folder.exists():
        return
    if shard_files(folder):
        raise InputError(f"shards but no manifest.json; {REPAIR_HINT.format(folder=folder)}", path=folder)
    ours = {LOCK, "shards", "candidates"}
    if any(p.name not in ours or (p.is_dir() and any(p.iterdir())) for p in folder.iterdir()):
        raise InputError("folder exists, is not empty and is not a teacher cache", path=folder)


def shard_files(folder: Path) -> list[Path]:
    return sorted((folder / "shards").glob("part-*.parquet"))


def identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a shard records of its cache: the manifest less its candidate list."""
    return {k: v for k, v in manifest.items() if k != "candidates"}


def shard_metadata(manifest: dict[str, Any]) -> dict[str, str]:
    return {IDENTITY_KEY: json.dumps(identity(manifest), sort_keys=True, default=str)}


def shard_identity(path: Path) -> dict[str, Any] | None:
    """The identity a shard recorded (None for shards of format 1)."""
    text = pl.read_parquet_metadata(path).get(IDENTITY_KEY)
    return None if text is None else json.loads(text)


class BadFile(Exception):
    """A cache file that cannot be read, with the reason."""


def read_rows(path: Path) -> pl.DataFrame:
    """A shard's rows (``qid, docid, score, qhash, dhash``; hashes null in a format-1 shard); BadFile if
    unreadable. FileNotFoundError passes through (a shard a compaction just folded away)."""
    frame = _read(path)
    missing = [c for c in (QID, DOCID, SCORE) if c not in frame.columns]
    if missing:
        raise BadFile(f"no column {missing[0]!r}")
    extra = [pl.lit(None, dtype=pl.String).alias(c) for c in (QHASH, DHASH) if c not in frame.columns]
    try:
        return frame.with_columns(extra).select(list(ROW_SCHEMA)).cast(ROW_SCHEMA)
    except pl.exceptions.PolarsError as err:
        raise BadFile(_reason(err)) from None


def read_pairs(path: Path) -> pl.DataFrame:
    """A candidate file's ``qid, docid``; BadFile if unreadable."""
    frame = _read(path)
    try:
        return frame.select(QID, DOCID).cast(PAIR_SCHEMA)
    except pl.exceptions.PolarsError as err:
        raise BadFile(_reason(err)) from None


def read_registry_file(path: Path) -> pl.DataFrame:
    frame = _read(path)
    try:
        return frame.select(list(REGISTRY_SCHEMA)).cast(REGISTRY_SCHEMA)
    except pl.exceptions.PolarsError as err:
        raise BadFile(_reason(err)) from None


def _read(path: Path) -> pl.DataFrame:
    try:
        return pl.read_parquet(path, glob=False)  # a folder named with [ or * is a name, not a pattern
    except FileNotFoundError:
        raise
    except (pl.exceptions.PolarsError, OSError, ValueError) as err:
        raise BadFile(_reason(err)) from None


def _reason(err: Exception) -> str:
    return " ".join(str(err).split())[:200] or type(err).__name__


def quarantine(folder: Path, path: Path, reason: str, what: str,
               then: str = "its pairs count as unscored and are scored again") -> None:
    """Move the unreadable ``path`` into ``folder/quarantine/`` with one warning naming it and saying
    what ``then`` happens (left in place, still named, where the folder is read-only); a file another
    process moved first is fine."""
    target = folder / QUARANTINE / path.name
    n = 1
    while target.exists():
        target = folder / QUARANTINE / f"{path.name}.{n}"
        n += 1
    try:
        target.parent.mkdir(exist_ok=True)
        os.replace(path, target)
    except FileNotFoundError:
        return
    except OSError as err:
        log.warning("%s: unreadable %s (%s), left in place (%s); `distill cache verify --repair %s` sets it aside",
                    path, what, reason, err.strerror, folder)
        return
    log.warning("%s: unreadable %s (%s), moved to %s; %s", path, what, reason, target, then)


def read_all_rows(folder: Path, paths: list[Path], *, set_aside: bool = True) -> pl.DataFrame | None:
    """The rows of all ``paths``, unreadable shards set aside; None when one vanished (a compaction
    folded it away meanwhile: list the shards again)."""
    frames = []
    for path in paths:
        try:
            frames.append(read_rows(path))
        except FileNotFoundError:
            return None
        except BadFile as bad:
            if set_aside:
                quarantine(folder, path, str(bad), "shard")
    return pl.concat(frames) if frames else pl.DataFrame(schema=ROW_SCHEMA)


def read_candidates(folder: Path, entries: list[dict[str, Any]]) -> list[tuple[dict[str, Any], pl.DataFrame]]:
    """Each manifest candidate entry whose file is there and readable, with its pairs."""
    found = []
    for entry in entries:
        path = folder / "candidates" / f"{entry['hash']}.parquet"
        try:
            found.append((entry, read_pairs(path)))
        except FileNotFoundError:
            continue
        except BadFile as bad:
            quarantine(folder, path, str(bad), "candidate file")
    return found


def read_registry(folder: Path) -> pl.DataFrame | None:
    """The text registry, or None when there is none (or it was unreadable and is now set aside)."""
    path = folder / REGISTRY
    try:
        return read_registry_file(path)
    except FileNotFoundError:
        return None
    except BadFile as bad:
        quarantine(folder, path, str(bad), "text registry", "the texts are taken from the shards")
        return None

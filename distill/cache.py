"""The teacher cache: raw teacher logits as long-format Parquet shards plus a manifest.

Layout of a cache folder::

    manifest.json                  kind, teacher fingerprint, corpus hash, candidate sets, versions
    shards/part-<keys hash>.parquet    qid, docid, score (float32), written atomically one by one
    candidates/<hash>.parquet      each candidate set asked for (qid, docid), for coverage and resume

A shard appears under its final name only once fully written, so a killed run loses at
most the batch in flight and a rerun scores only the pairs no shard holds. A shard is named
by the hash of the (qid, docid) keys it holds, so writing the same batch twice (a retried
task, a second driver) replaces the file instead of duplicating its rows. Asking a cache
with another teacher fingerprint (or another corpus) is a :class:`CacheMismatchError`.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from distill.errors import CacheMismatchError, InputError
from distill.io import atomic_path, write_json_atomic
from distill.manifest import frame_hash, library_versions
from distill.ranking import BaseRanker
from distill.registry import TEACHERS
from distill.schema import DOCID, QID, SCORE, SCORES_SCHEMA

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
KIND = "teacher-cache"
FORMAT = 1


def _read_manifest(folder: Path) -> dict[str, Any]:
    import json

    path = folder / MANIFEST
    if not path.is_file():
        raise InputError("not a teacher cache (no manifest.json); create it with `distill score-teacher`", path=folder)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"unreadable manifest: {err}", path=path) from None
    if manifest.get("kind") != KIND:
        raise InputError(f"not a teacher cache (kind {manifest.get('kind')!r})", path=path, field="kind")
    return manifest


def _diff(a: dict, b: dict) -> str:
    keys = sorted(set(a) | set(b))
    return "; ".join(f"{k}: cache has {a.get(k)!r}, asked {b.get(k)!r}" for k in keys if a.get(k) != b.get(k))


def shard_of(qids: list[str], docids: list[str], n: int) -> np.ndarray:
    """A stable shard number in [0, n) per pair (crc32: the same on every machine and version)."""
    return np.fromiter(
        (zlib.crc32(f"{q}\0{d}".encode()) % n for q, d in zip(qids, docids)), dtype=np.int64, count=len(qids)
    )


def shard_name(scored: pl.DataFrame) -> str:
    """``part-<hash>.parquet``, the hash taken over the sorted (qid, docid) keys of ``scored``."""
    return f"part-{frame_hash(scored.select(QID, DOCID).sort([QID, DOCID]))}.parquet"


@dataclass
class CacheInfo:
    rows: int
    queries: int
    shards: int
    teacher: dict[str, Any]
    coverage: list[dict[str, Any]]


class TeacherCache:
    """A folder of cached teacher scores for one teacher fingerprint and one corpus."""

    def __init__(self, folder: str | Path, manifest: dict[str, Any], *, persisted: bool = True) -> None:
        self.folder = Path(folder)
        self.manifest = manifest
        self._persisted = persisted
        self._pending: list[tuple[pl.DataFrame, str]] = []

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, folder: str | Path) -> TeacherCache:
        """Open an existing cache for reading."""
        folder = Path(folder)
        return cls(folder, _read_manifest(folder))

    @classmethod
    def create_or_open(cls, folder: str | Path, teacher: dict[str, Any], corpus_hash: str | None) -> TeacherCache:
        """Open ``folder`` for ``teacher``; another teacher is refused.

        A new cache touches the disk only with its first shard, so a run that fails before
        scoring anything leaves no folder behind.
        """
        folder = Path(folder)
        if (folder / MANIFEST).exists():
            cache = cls.open(folder)
            cache.check(teacher, corpus_hash)
            return cache
        if folder.exists() and any(folder.iterdir()):
            raise InputError("folder exists, is not empty and is not a teacher cache", path=folder)
        manifest = {
            "kind": KIND, "format": FORMAT, "teacher": teacher, "corpus_hash": corpus_hash,
            "candidates": [], "versions": library_versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        return cls(folder, manifest, persisted=False)

    def _persist(self) -> None:
        if self._persisted:
            return
        (self.folder / "shards").mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.folder / MANIFEST, self.manifest)
        self._persisted = True
        for pairs, source in self._pending:
            self.register_candidates(pairs, source)
        self._pending.clear()

    def check(self, teacher: dict[str, Any], corpus_hash: str | None) -> None:
        if self.manifest["teacher"] != teacher:
            raise CacheMismatchError(
                f"cache holds scores of another teacher ({_diff(self.manifest['teacher'], teacher)}); "
                "use another --cache folder", path=self.folder / MANIFEST, field="teacher",
            )
        have = self.manifest.get("corpus_hash")
        if have is not None and corpus_hash is not None and have != corpus_hash:
            raise CacheMismatchError(
                f"cache was built on another corpus (hash {have}, asked {corpus_hash})",
                path=self.folder / MANIFEST, field="corpus_hash",
            )

    # -- reading -------------------------------------------------------------------------
    def shard_paths(self) -> list[Path]:
        if not self._persisted:
            return []
        return sorted(p for p in (self.folder / "shards").glob("part-*.parquet"))

    def scores(self) -> pl.DataFrame:
        """All cached ``qid, docid, score`` rows, one per pair."""
        paths = self.shard_paths()
        if not paths:
            return pl.DataFrame(schema=SCORES_SCHEMA)
        frame = pl.read_parquet(paths).select(list(SCORES_SCHEMA)).cast(SCORES_SCHEMA)
        return frame.unique(subset=[QID, DOCID], keep="first", maintain_order=True)

    def missing(self, pairs: pl.DataFrame) -> pl.DataFrame:
        """The rows of ``pairs`` (qid, docid) that no shard holds yet."""
        cached = self.scores().select(QID, DOCID)
        return pairs.select(QID, DOCID).unique(maintain_order=True).join(cached, on=[QID, DOCID], how="anti")

    # -- writing -------------------------------------------------------------------------
    def append(self, scored: pl.DataFrame) -> Path:
        """Write one shard of ``qid, docid, score`` atomically; refuses non-finite scores."""
        scored = scored.select(list(SCORES_SCHEMA)).cast(SCORES_SCHEMA)
        bad = scored.filter(~pl.col(SCORE).is_finite())
        if bad.height:
            q, d, s = bad.row(0)
            raise InputError(f"teacher returned a non-finite score {s} for ({q}, {d}); nothing was written "
                             f"for this batch ({bad.height} bad pairs)", path=self.folder, field="score")
        self._persist()
        path = self.folder / "shards" / shard_name(scored)
        with atomic_path(path) as tmp:
            scored.write_parquet(tmp, compression="zstd")
        return path

    def register_candidates(self, pairs: pl.DataFrame, source: str) -> str:
        """Remember a candidate set (for ``cache info`` coverage); returns its hash."""
        pairs = pairs.select(QID, DOCID).unique().sort([QID, DOCID])
        digest = frame_hash(pairs)
        if not self._persisted:
            self._pending.append((pairs, source))
            return digest
        path = self.folder / "candidates" / f"{digest}.parquet"
        if not path.exists():
            with atomic_path(path) as tmp:
                pairs.write_parquet(tmp, compression="zstd")
        entries = [c for c in self.manifest["candidates"] if c["hash"] != digest]
        entries.append({"hash": digest, "pairs": pairs.height, "source": source})
        self.manifest["candidates"] = entries
        write_json_atomic(self.folder / MANIFEST, self.manifest)
        return digest

    def compact(self) -> None:
        """Fold all shards into one (duplicates dropped); safe to interrupt at any point."""
        paths = self.shard_paths()
        if len(paths) <= 1:
            return
        kept = self.append(self.scores())
        for path in paths:
            if path != kept:  # a shard whose keys cover all the others' is rewritten under its own name
                path.unlink()

    # -- summary -------------------------------------------------------------------------
    def unscored(self, qids: Iterable[str]) -> tuple[int, int]:
        """Of the registered candidate pairs of these queries: how many lack a score, out of how many.

        A score-teacher run that was stopped leaves a cache that covers only part of its candidates;
        training on it quietly would train on that part alone.
        """
        paths = [self.folder / "candidates" / f"{c['hash']}.parquet" for c in self.manifest.get("candidates", [])]
        paths = [p for p in paths if p.exists()]
        if not paths:
            return 0, 0
        wanted = pl.DataFrame({QID: list(qids)}, schema={QID: pl.String})
        pairs = pl.concat([pl.read_parquet(p) for p in paths]).unique().join(wanted, on=QID, how="semi")
        return self.missing(pairs).height, pairs.height

    def info(self) -> CacheInfo:
        scores = self.scores()
        cached = scores.select(QID, DOCID)
        coverage = []
        for entry in self.manifest.get("candidates", []):
            path = self.folder / "candidates" / f"{entry['hash']}.parquet"
            if not path.exists():
                continue
            pairs = pl.read_parquet(path)
            done = pairs.join(cached, on=[QID, DOCID], how="semi").height
            coverage.append({**entry, "scored": done, "coverage": done / max(pairs.height, 1)})
        return CacheInfo(
            rows=scores.height, queries=scores[QID].n_unique(), shards=len(self.shard_paths()),
            teacher=self.manifest["teacher"], coverage=coverage,
        )


def read_scores(folder: str | Path) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Teacher scores ``qid, docid, score`` and the manifest of a cache folder."""
    cache = TeacherCache.open(folder)
    scores = cache.scores()
    if scores.height == 0:
        raise InputError("teacher cache holds no scores yet", path=folder)
    return scores, cache.manifest


def merge_caches(out: str | Path, sources: list[str | Path]) -> TeacherCache:
    """Join caches of the same teacher (e.g. the ``--shard i/N`` parts) into ``out``."""
    if not sources:
        raise InputError("nothing to merge")
    opened = [TeacherCache.open(s) for s in sources]
    first = opened[0].manifest
    for cache in opened[1:]:
        cache.check(first["teacher"], first.get("corpus_hash"))
    target = TeacherCache.create_or_open(out, first["teacher"], first.get("corpus_hash"))
    frames = [c.scores() for c in opened]
    merged = pl.concat(frames).unique(subset=[QID, DOCID], keep="first", maintain_order=True)
    fresh = merged.join(target.scores().select(QID, DOCID), on=[QID, DOCID], how="anti")
    if fresh.height:
        target.append(fresh)
    for cache in opened:
        for entry in cache.manifest.get("candidates", []):
            path = cache.folder / "candidates" / f"{entry['hash']}.parquet"
            if path.exists():
                target.register_candidates(pl.read_parquet(path), entry.get("source", str(cache.folder)))
    target.compact()
    return target


class CachedRanker(BaseRanker):
    """A :class:`~distill.ranking.BaseRanker` that returns cached teacher scores (no model calls)."""

    def __init__(self, folder: str | Path, name: str = "teacher") -> None:
        self.cache = TeacherCache.open(folder)
        self.name = name
        self._scores = self.cache.scores()

    def rerank(self, dataset, run: pl.DataFrame) -> pl.DataFrame:
        joined = run.select(QID, DOCID).join(self._scores, on=[QID, DOCID], how="left")
        missing = joined.filter(pl.col(SCORE).is_null()).height
        if missing:
            raise InputError(f"{missing} of {joined.height} candidates have no cached teacher score; "
                             "run `distill score-teacher` on these candidates first", path=self.cache.folder)
        return joined.with_columns(pl.col(SCORE).cast(pl.Float64))

    def live(self) -> BaseRanker | None:
        """The teacher model itself (for timing, and for pairs no cache holds), loaded by its
        fingerprint's kind through :data:`distill.registry.TEACHERS`; None when the
        fingerprint names no model."""
        fingerprint = self.cache.manifest["teacher"]
        if "model" not in fingerprint:
            return None
        teacher = TEACHERS.load(fingerprint.get("kind", "cross-encoder"), fingerprint["model"],
                                max_length=fingerprint.get("max_length"), revision=fingerprint.get("revision"),
                                path=self.cache.folder / "manifest.json")
        teacher.name = self.name
        return teacher

    def get_config_dict(self) -> dict[str, Any]:
        return {"cache": str(self.cache.folder), "teacher": self.cache.manifest["teacher"]}

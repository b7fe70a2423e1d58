"""The teacher cache: raw teacher logits as long-format Parquet shards plus a manifest.

Layout of a cache folder (format 2)::

    manifest.json                      the cache's identity and candidate sets (schema below)
    shards/part-<keys hash>.parquet    qid, docid, score (float32), qhash, dhash; written atomically one by one
    candidates/<hash>.parquet          each candidate set asked for (qid, docid), for coverage and resume
    texts.parquet                      the current text of each id: side (q/d), id, hash, adopted
    quarantine/                        unreadable files set aside (torn by a crash, emptied)
    .lock                              the write lock (:mod:`distill.cache.lock`)

The manifest (one schema, one version number ``format``; later additions go here too)::

    kind         "teacher-cache"                                              required
    format       2 (1: shards without qhash/dhash and no texts.parquet)      required
    teacher      the teacher's fingerprint (a dict): which scores these are  required
    corpus_hash  hash of the corpus the scores were computed on, or null
    candidates   [{hash, pairs, source}]: the candidate sets registered
    precision    how the teacher's precision was chosen (teachers.precision)
    versions, created                                                         informative

A shard appears under its final name only once fully written, so a killed run loses at
most the batch in flight and a rerun scores only the pairs no shard holds. A shard is named
by the hash of the (qid, docid) keys it holds, so writing the same batch twice (a retried
task, a second driver) replaces the file instead of duplicating its rows; its Parquet
metadata repeats the manifest less its candidates, so a lost manifest can be rebuilt
(``distill cache verify --repair``). Asking a cache with another teacher fingerprint (or
another corpus) is a :class:`CacheMismatchError`, also for a second writer whose teacher
differs (checked under the lock at its first write).

A score counts only for the texts it was computed from (:mod:`distill.cache.texts`):
registering candidates with their texts' hashes makes the rows of changed texts stale, so
their pairs are scored again. Every write holds the folder's lock and re-reads the manifest
first (:mod:`distill.cache.lock`); readers take no lock. Unreadable shards and candidate
files are set aside with a warning (:mod:`distill.cache.files`).
"""

from __future__ import annotations

import copy
import logging
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from distill.cache import files as cache_files
from distill.cache import reading as cache_reading
from distill.cache import texts as cache_texts
from distill.cache.files import FORMAT, KIND, MANIFEST, REPAIR_HINT
from distill.cache.lock import CacheLock
from distill.cache.texts import DHASH, QHASH
from distill.core.errors import InputError
from distill.core.io import atomic_path, write_json_atomic
from distill.core.manifest import frame_hash, library_versions
from distill.core.registry import TEACHERS
from distill.core.schema import DOCID, QID, SCORE, SCORES_SCHEMA
from distill.rankers.base import BaseRanker

log = logging.getLogger(__name__)

_UNSET = object()


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
        self._loaded = copy.deepcopy(manifest)  # as last read or written: what this object changed since
        self._pending: list[Callable[[], None]] = []  # writes asked for before the cache was on disk
        self._lock = CacheLock(self.folder)

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, folder: str | Path) -> TeacherCache:
        """Open an existing cache for reading."""
        folder = Path(folder)
        return cls(folder, cache_files.read_manifest(folder))

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
        cache_files.check_new_folder(folder)
        manifest = {
            "kind": KIND, "format": FORMAT, "teacher": teacher, "corpus_hash": corpus_hash,
            "candidates": [], "versions": library_versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        return cls(folder, manifest, persisted=False)

    def check(self, teacher: dict[str, Any], corpus_hash: str | None) -> None:
        cache_files.check_identity(self.manifest, teacher, corpus_hash, self.folder)

    # -- writing: each under the folder's lock, on the manifest as it is on disk ----------------
    def _unborn(self) -> bool:
        return not self._persisted and not (self.folder / MANIFEST).is_file()

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the folder's lock with ``self.manifest`` re-read from disk (this object's own changes
        applied on top); the first write of a new cache creates it."""
        with self._lock.held():
            self._sync()
            yield

    def _sync(self) -> None:
        path = self.folder / MANIFEST
        if not path.exists():
            if self._persisted:
                raise InputError(f"manifest.json is gone; {REPAIR_HINT.format(folder=self.folder)}", path=self.folder)
            cache_files.check_new_folder(self.folder)
            write_json_atomic(path, self.manifest)
        else:
            disk = cache_files.validate_manifest(cache_files.parse_manifest(path), path)
            cache_files.check_identity(disk, self.manifest["teacher"], self.manifest.get("corpus_hash"), self.folder)
            changed = {k: v for k, v in self.manifest.items()
                       if k != "candidates" and self._loaded.get(k, _UNSET) != v}
            merged = {**disk, **changed, "format": FORMAT}
            if disk["format"] < FORMAT:
                log.warning("%s: written by an older distill (cache format %d) that did not record the texts it "
                            "scored; its existing scores are taken as scored from the texts registered now",
                            self.folder, disk["format"])
            if merged != disk:
                write_json_atomic(path, merged)
            self.manifest = merged
        self._persisted = True
        self._loaded = copy.deepcopy(self.manifest)
        pending, self._pending = self._pending, []
        for write in pending:
            write()

    def _write_shard(self, rows: pl.DataFrame) -> Path:
        path = self.folder / "shards" / shard_name(rows)
        with atomic_path(path) as tmp:
            rows.write_parquet(tmp, compression="zstd", metadata=cache_files.shard_metadata(self.manifest))
        return path

    def append(self, scored: pl.DataFrame) -> Path:
        """Write one shard of ``qid, docid, score`` atomically; refuses non-finite scores.

        With ``qhash``/``dhash`` columns (:func:`distill.cache.texts.with_text_hashes`) the rows
        record the texts they were scored from; without, the texts registered now.
        """
        hashed = [c for c in (QHASH, DHASH) if c in scored.columns]
        scored = scored.select(*SCORES_SCHEMA, *hashed).cast({**SCORES_SCHEMA, **{c: pl.String for c in hashed}})
        bad = scored.filter(~pl.col(SCORE).is_finite())
        if bad.height:
            q, d, s = bad.row(0)[:3]
            raise InputError(f"teacher returned a non-finite score {s} for ({q}, {d}); nothing was written "
                             f"for this batch ({bad.height} bad pairs)", path=self.folder, field="score")
        scored = scored.with_columns(pl.lit(None, dtype=pl.String).alias(c) for c in (QHASH, DHASH)
                                     if c not in hashed)
        with self._writing():  # the first texts seen of an id are its current ones
            registry = self._save_registry(self._registry(), cache_texts.registry_of(scored), replace=False)
            return self._write_shard(cache_texts.fill_hashes(scored, registry))

    def register_texts(self, hashed: pl.DataFrame) -> dict[str, int]:
        """Record the texts of ``hashed`` (qid, docid, qhash, dhash; :func:`distill.cache.texts.text_hashes`)
        as the current ones; rows scored from other texts become stale and their pairs unscored.
        Returns how many queries (``q``) and documents (``d``) changed text."""
        entries = cache_texts.registry_of(hashed)
        if self._unborn():
            self._pending.append(lambda: self._register_texts_locked(entries))
            return {"q": 0, "d": 0}
        with self._writing():
            return self._register_texts_locked(entries)

    def _register_texts_locked(self, entries: pl.DataFrame) -> dict[str, int]:
        counts = {}
        self._save_registry(self._registry(), entries, replace=True, counts=counts)
        if counts["q"] or counts["d"]:
            log.warning("%s: %d query text(s) and %d document text(s) differ from those their cached scores were "
                        "computed from; those pairs are scored again", self.folder, counts["q"], counts["d"])
        return counts

    def _save_registry(self, registry: pl.DataFrame, entries: pl.DataFrame, *, replace: bool,
                       counts: dict[str, int] | None = None) -> pl.DataFrame:
        updated, changed = cache_texts.update_registry(registry, entries, replace=replace)
        if counts is not None:
            counts.update(changed)
        if updated.height != registry.height or (replace and any(changed.values())) \
                or not (self.folder / cache_texts.REGISTRY).exists():
            with atomic_path(self.folder / cache_texts.REGISTRY) as tmp:
                updated.sort("side", "id").write_parquet(tmp, compression="zstd")
        return updated

    def register_candidates(self, pairs: pl.DataFrame, source: str) -> str:
        """Remember a candidate set (for ``cache info`` coverage, and ``unscored``); returns its hash.
        With ``qhash``/``dhash`` columns, their texts are registered as current too (:meth:`register_texts`)."""
        if QHASH in pairs.columns and DHASH in pairs.columns:
            self.register_texts(pairs)
        pairs = pairs.select(QID, DOCID).unique().sort([QID, DOCID])
        digest = frame_hash(pairs)
        if self._unborn():
            self._pending.append(lambda: self._register_candidates_locked(pairs, digest, source))
            return digest
        with self._writing():
            self._register_candidates_locked(pairs, digest, source)
        return digest

    def _register_candidates_locked(self, pairs: pl.DataFrame, digest: str, source: str) -> None:
        path = self.folder / "candidates" / f"{digest}.parquet"
        try:
            cache_files.read_pairs(path)
        except (FileNotFoundError, cache_files.BadFile):  # absent, or torn: (re)written whole
            with atomic_path(path) as tmp:
                pairs.write_parquet(tmp, compression="zstd")
        entries = [c for c in self.manifest.get("candidates", []) if c["hash"] != digest]
        entries.append({"hash": digest, "pairs": pairs.height, "source": source})
        self.manifest["candidates"] = entries
        write_json_atomic(self.folder / MANIFEST, self.manifest)
        self._loaded = copy.deepcopy(self.manifest)

    def compact(self) -> None:
        """Fold all shards into one (duplicates and rows of stale texts dropped); safe to interrupt at any point."""
        if self._unborn():
            return
        with self._writing():
            paths = self.shard_paths()
            if len(paths) <= 1:
                return
            rows = cache_texts.effective(*self._state())
            kept = rows.filter("valid").drop("valid").unique(subset=[QID, DOCID], keep="first", maintain_order=True)
            written = self._write_shard(kept) if kept.height else None
            for path in paths:
                if path != written:  # a shard whose keys cover all the others' is rewritten under its own name
                    path.unlink(missing_ok=True)

    # -- reading (no lock: every file is whole under its final name) -----------------------------
    def shard_paths(self) -> list[Path]:
        return cache_files.shard_files(self.folder) if self._persisted else []

    def _rows(self, transform: Callable[[pl.DataFrame], pl.DataFrame] | None = None) -> pl.DataFrame:
        """Every shard row (with hashes), or ``transform`` of them (:func:`distill.cache.reading.read_shards`)."""
        return cache_reading.read_shards(self.folder, self.shard_paths, transform or (lambda rows: rows))

    def _registry(self, rows: pl.DataFrame | None = None) -> pl.DataFrame:
        """The text registry; rebuilt from the shards' hashes where it is missing or unreadable."""
        registry = cache_files.read_registry(self.folder) if self._persisted else None
        return cache_texts.rebuild_registry(self._rows() if rows is None else rows) if registry is None else registry

    def _state(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        rows = self._rows()
        return rows, self._registry(rows)

    def texts(self) -> pl.DataFrame:
        """The current text of each id: ``side`` (q/d), ``id``, ``hash``, ``adopted`` (:mod:`distill.cache.texts`)."""
        return self._registry()

    def valid_rows(self) -> pl.DataFrame:
        """``qid, docid, score, qhash, dhash`` of every row scored from the current texts."""
        return cache_texts.effective(*self._state()).filter("valid").drop("valid")

    def scores(self, dataset: Any = None) -> pl.DataFrame:
        """All cached ``qid, docid, score`` rows scored from the current texts, one per pair (its first row in
        shard order); given a ``dataset`` (to train on), only those scored from its texts."""
        codes, coded = self._coded_scores(dataset)
        return codes.decode(coded)

    def _coded_scores(self, dataset: Any) -> tuple[cache_reading.PairCodes, pl.DataFrame]:
        """:meth:`scores` as integer codes (``_q, _d, score``) with their :class:`~distill.cache.reading.PairCodes`,
        read a batch at a time (:mod:`distill.cache.reading`: bounded memory, issue 36)."""
        codes = cache_reading.PairCodes(self._registry(), dataset)
        return codes, cache_reading.first_per_pair(self._rows(codes.counted))

    def missing(self, pairs: pl.DataFrame) -> pl.DataFrame:
        """The rows of ``pairs`` (qid, docid) that no shard holds yet; with ``qhash``/``dhash``
        columns, also those whose cached score was computed from other texts."""
        unique = pairs.select(QID, DOCID).unique(maintain_order=True)
        if QHASH in pairs.columns and DHASH in pairs.columns:
            rows = cache_texts.effective(*self._state())
            held = cache_texts.present(pairs.unique([QID, DOCID], maintain_order=True), rows)
        else:
            held = self.scores().select(QID, DOCID)
        return unique.join(held, on=[QID, DOCID], how="anti")

    # -- summary -------------------------------------------------------------------------
    def unscored(self, qids: Iterable[str], dataset: Any = None) -> tuple[int, int]:
        """Of the registered candidate pairs of these queries: how many lack a score, out of how many.
        Given the ``dataset`` to train on, a score computed from other texts than its own counts as lacking:
        a pair counts as scored when :meth:`scores` of ``dataset`` holds it. A score-teacher run that was
        stopped leaves a cache that covers only part of its candidates; training on it quietly would train
        on that part alone."""
        return self.scores_and_unscored(qids, dataset)[1]

    def scores_and_unscored(self, qids: Iterable[str], dataset: Any = None) -> tuple[pl.DataFrame, tuple[int, int]]:
        """:meth:`scores` and :meth:`unscored` from one read (what train-student needs): the pairs compared
        as the read's integer codes, not read again nor compared as strings."""
        codes, coded = self._coded_scores(dataset)
        sets = cache_reading.candidate_sets(self.folder, self.manifest.get("candidates", []))
        lacking = cache_reading.unscored(codes, coded, (pairs for _, pairs in sets), qids)
        return codes.decode(coded), lacking

    def info(self) -> CacheInfo:
        codes, coded = self._coded_scores(None)
        held = coded.select(cache_reading.pair_key()).to_series().implode()
        coverage = []
        for entry, pairs in cache_reading.candidate_sets(self.folder, self.manifest.get("candidates", [])):
            done = int(codes.keys(pairs).is_in(held).sum())
            coverage.append({**entry, "scored": done, "coverage": done / max(pairs.height, 1)})
        return CacheInfo(
            rows=coded.height, queries=coded[cache_reading.CODES[0]].n_unique(), shards=len(self.shard_paths()),
            teacher=self.manifest["teacher"], coverage=coverage,
        )


def read_scores(folder: str | Path, dataset: Any = None) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Teacher scores ``qid, docid, score`` and the manifest of a cache folder; given a ``dataset``,
    only the scores computed from its texts (:meth:`TeacherCache.scores`)."""
    cache = TeacherCache.open(folder)
    scores = cache.scores(dataset)
    if scores.height == 0:
        raise InputError("teacher cache holds no scores yet", path=folder)
    return scores, cache.manifest


def merge_caches(out: str | Path, sources: list[str | Path]) -> TeacherCache:
    """Join caches of the same teacher (e.g. the ``--shard i/N`` parts) into ``out``
    (:func:`distill.cache.merge.merge`)."""
    from distill.cache.merge import merge

    return merge(out, sources)


class CachedRanker(BaseRanker):
    """A :class:`~distill.rankers.base.BaseRanker` that returns cached teacher scores (no model calls)."""

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
        fingerprint's kind through :data:`distill.core.registry.TEACHERS`; None when the
        fingerprint names no model."""
        fingerprint = self.cache.manifest["teacher"]
        if "model" not in fingerprint:
            return None
        scoring = {"passages": fingerprint["passages"]} if fingerprint.get("passages") else {}  # as it was scored
        teacher = TEACHERS.load(fingerprint.get("kind", "cross-encoder"), fingerprint["model"],
                                max_length=fingerprint.get("max_length"), revision=fingerprint.get("revision"),
                                path=self.cache.folder / "manifest.json", **scoring)
        teacher.name = self.name
        # computes as the cache was scored (the choice its scoring measured) where it can here, rather than timing
        # every compute on a sample again, and perhaps timing a compute the cache was not scored in
        if resume := getattr(teacher, "resume_precision", None):  # a plugin's teacher may have no precision choice
            resume(fingerprint)
        return teacher

    def get_config_dict(self) -> dict[str, Any]:
        return {"cache": str(self.cache.folder), "teacher": self.cache.manifest["teacher"]}

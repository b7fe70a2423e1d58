"""``score_teacher``: a teacher's raw logits for a candidate run, into a resumable cache.

The safe sequence, in order: settle the precision (taken over from the cache when it
recorded one, else measured on a small sample of the pairs still to score, whose scores
become the cache's first rows), fingerprint the teacher, open the cache for that
fingerprint, register the candidates with the hashes of their texts (pairs cached from other
texts count as missing), check on a sample that judged positives outscore
unjudged candidates (reading back rows already scored), then score the missing pairs.
Scoring the missing pairs is one call to an *engine*, so another engine (several workers)
can take its place.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from distill.cache.scoring import ScoreStats, parse_shard, select_shard
from distill.cache.store import MANIFEST, TeacherCache
from distill.cache.texts import text_hashes
from distill.core.errors import ConfigError, InputError
from distill.core.manifest import frame_hash
from distill.core.schema import DOCID, QID, SCORE, require_columns
from distill.inference.passages import PassageConfig
from distill.rankers.base import SETTLE_PAIRS
from teachers.base import Teacher

if TYPE_CHECKING:
    from distill.data.beir import Dataset
    from teachers.precision import PrecisionChoice

log = logging.getLogger(__name__)

# An engine scores the pairs of ``run`` the cache lacks and writes them to it:
# ``engine(teacher, dataset, run, cache, *, shard, flush_pairs, show_progress, **engine_options)``.
Engine = Callable[..., ScoreStats]


def _local_engine() -> Engine:
    from distill.cache.scoring import score_into_cache

    return score_into_cache


def _ray_engine() -> Engine:
    from teachers.ray_engine import score_on_ray

    return score_on_ray


# Engine name -> a function returning it (imported only when asked for).
ENGINES: dict[str, Callable[[], Engine]] = {"local": _local_engine, "ray": _ray_engine}


@dataclass(frozen=True)
class TeacherScoringConfig:
    """``distill score-teacher``'s settings: how the teacher is loaded and how its scores are written.

    A field's metadata holds its help text, which makes it one of the command's options
    (:mod:`distill.app.options`); :meth:`teacher_options` are :func:`score_teacher`'s ``teacher_options``.
    """

    kind: str = field(default="auto", metadata={"help": "auto | cross-encoder | generative."})
    max_length: int | None = field(default=None, metadata={"help": "Tokens per pair [the model's own, at most 512].",
                                                            "min": 8})
    dtype: str = field(default="auto", metadata={"help": (
        "auto (the fastest that ranks like fp32, timed on a sample) | fp32 | bf16 | fp16 | int8 (cross-encoders on "
        "a CPU: dynamic int8 linear layers; reduced ones are checked vs fp32).")})
    backend: str = field(default="auto", metadata={"help": (
        "auto (with --dtype auto: torch, or on a CPU ONNX Runtime/OpenVINO when installed and faster on a run long "
        "enough to pay for the export) | torch | onnx | openvino (checked vs torch fp32).")})
    device: str | None = field(default=None, metadata={"help": "cuda, cuda:1, mps, cpu [the best available]."})
    batch_tokens: int | None = field(default=None, metadata={
        "help": "Padded tokens per batch [chosen for the device]."})
    shard: str | None = field(default=None, metadata={"help": "Score only part i of N of the pairs: i/N [all pairs]."})
    flush_pairs: int = field(default=1024, metadata={
        "help": "Pairs per cache shard and per Ray batch (lost at most on a crash).", "min": 1})
    revision: str | None = field(default=None, metadata={"help": "Hub revision of the teacher [the latest]."})
    instruction: str | None = field(default=None, metadata={
        "help": "Generative teachers: the task instruction [a generic relevance instruction]."})
    allow_untrained_head: bool = field(default=False, metadata={
        "help": "Accept a freshly initialised classification head."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run the model repository's own code."})
    sanity_check: bool = field(default=True, metadata={"help": "Check that positives outscore negatives on a sample."})
    engine: str = field(default="local", metadata={
        "help": "local (this process) | ray (Ray workers; see docs/ray.md)."})
    passages: str | None = field(default=None, metadata={"help": (
        "Long documents: score each passage and combine, first (FirstP) | max (MaxP) | sum (SumP); cross-encoders "
        "only [none: the document truncated to --max-length].")})
    passage_tokens: int | None = field(default=PassageConfig.tokens, metadata={
        "help": "--passages: tokens per passage, of the teacher's tokenizer [--max-length].", "min": 8})
    passage_stride: int | None = field(default=PassageConfig.stride, metadata={
        "help": "--passages: tokens from a passage's start to the next one's [half of --passage-tokens].", "min": 1})

    def teacher_options(self) -> dict[str, Any]:
        """How :func:`teachers.loading.load_teacher` loads the teacher (None: the teacher's own default)."""
        return {"kind": self.kind, "dtype": self.dtype, "backend": self.backend, "device": self.device,
                "revision": self.revision, "trust_remote_code": self.trust_remote_code,
                "allow_untrained_head": self.allow_untrained_head, "max_tokens_per_batch": self.batch_tokens,
                "max_length": self.max_length, "instruction": self.instruction,
                "passages": PassageConfig.from_options(self.passages, self.passage_tokens, self.passage_stride)}


# score-teacher's defaults, which score_teacher's keyword arguments share (one home: the config's fields)
_DEFAULTS = TeacherScoringConfig()


@dataclass
class TeacherScoring:
    """What :func:`score_teacher` did."""

    cache: Path
    fingerprint: dict[str, Any]
    dtype: str
    precision: dict[str, Any] | None  # what was measured; None when resumed from the cache or fixed
    sample_scored: int  # pairs scored while choosing the precision, kept in the cache
    sanity: dict[str, Any] | None  # check_teacher's report; None when not run
    scoring: ScoreStats  # the engine's part
    seconds: float = 0.0
    reused_precision: bool = False  # the precision came from the cache's manifest

    @property
    def scored(self) -> int:
        """Candidate pairs newly in the cache (sample, sanity check and engine together)."""
        return self.sample_scored + (self.sanity or {}).get("kept", 0) + self.scoring.scored


def score_teacher(
    teacher: Teacher | str | Path,
    dataset: Dataset,
    candidates: pl.DataFrame,
    cache: str | Path,
    *,
    source: str = "candidates",
    shard: tuple[int, int] | str | None = None,
    flush_pairs: int = _DEFAULTS.flush_pairs,
    sanity_check: bool = _DEFAULTS.sanity_check,
    show_progress: bool = True,
    engine: str = _DEFAULTS.engine,
    engine_options: dict[str, Any] | None = None,
    **teacher_options: Any,
) -> TeacherScoring:
    """Score the (qid, docid) pairs of ``candidates`` the cache folder ``cache`` lacks.

    ``teacher`` is a loaded :class:`Teacher`, or a model folder / hub id loaded with
    :func:`teachers.load_teacher` and ``teacher_options`` (kind, dtype, max_length, device,
    revision, instruction, allow_untrained_head, trust_remote_code, max_tokens_per_batch, passages).
    ``source`` names the candidates in the cache manifest; ``shard`` ("i/N" or ``(i, N)``)
    scores only that part; ``engine`` chooses how the missing pairs are scored (see
    :data:`ENGINES`). Rerunning resumes: only missing pairs are scored, in the precision
    the cache recorded.
    """
    start = time.perf_counter()
    folder = Path(cache)
    _check_arguments(candidates, folder, engine)
    shard_spec = parse_shard(shard) if isinstance(shard, str) else shard
    model = _teacher(teacher, teacher_options)

    existing = TeacherCache.open(folder) if (folder / MANIFEST).is_file() else None
    reused = existing is not None and model.resume_precision(existing.manifest["teacher"])
    if reused:
        log.info("%s: compute %s, as recorded in %s", model.name, model.compute, folder)
    hashed = text_hashes(dataset, candidates)  # a pair cached from other texts is still to score
    pairs = select_shard(hashed, shard_spec)
    todo = existing.missing(pairs) if existing is not None else pairs
    store, choice = _open_store(model, dataset, folder, hashed, source, todo if todo.height else pairs)
    sanity = None
    if sanity_check and todo.height and dataset.qrels.height:
        from teachers.sanity import check_teacher

        sanity = check_teacher(model, dataset, candidates, cache=store)
    stats = ENGINES[engine]()(model, dataset, candidates, store, shard=shard_spec, flush_pairs=flush_pairs,
                              show_progress=show_progress, **(engine_options or {}))
    result = TeacherScoring(
        cache=folder, fingerprint=model.fingerprint(), dtype=model.compute,
        precision=None if choice is None else choice.to_dict(),
        sample_scored=0 if choice is None else len(choice.index),
        sanity=sanity, scoring=stats, seconds=time.perf_counter() - start, reused_precision=reused,
    )
    log.info("cache %s: %d pairs scored now (%d of them while choosing the precision, %d by the sanity check), "
             "%d were cached; %.1fs in all", folder, result.scored, result.sample_scored,
             (sanity or {}).get("kept", 0), stats.already_cached, result.seconds)
    return result


def _check_arguments(candidates: pl.DataFrame, folder: Path, engine: str) -> None:
    """Refuse candidates without ids, a cache that is a file and an unknown engine, before a teacher is loaded."""
    require_columns(candidates, [QID, DOCID], "candidates")
    if folder.exists() and not folder.is_dir():
        raise InputError("the cache must be a folder; this is a file", path=folder)
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}", field="engine")


def _open_store(model: Teacher, dataset: Dataset, folder: Path, hashed: pl.DataFrame, source: str,
                pairs: pl.DataFrame) -> tuple[TeacherCache, PrecisionChoice | None]:
    """Settle a pending precision on ``pairs`` (which fixes the model's fingerprint), then open the cache with
    the candidates ``hashed`` registered as ``source`` and the choice and its sample's scores recorded."""
    sample, choice = _settle(model, dataset, pairs)
    store = TeacherCache.create_or_open(folder, model.fingerprint(), frame_hash(dataset.corpus))
    store.register_candidates(hashed, source)  # with their texts, which are the current ones from now on
    if choice is not None:
        store.manifest["precision"] = choice.to_dict()  # written with the first shard, which follows
        store.append(sample[choice.index.tolist()].with_columns(pl.Series(SCORE, choice.scores)))
    return store, choice


def _teacher(teacher: Teacher | str | Path, options: dict[str, Any]) -> Teacher:
    if isinstance(teacher, Teacher):
        if options:
            raise ConfigError(f"teacher options {sorted(options)} apply to a model name, not to a loaded teacher")
        return teacher
    from teachers.loading import load_teacher

    return load_teacher(teacher, **{k: v for k, v in options.items() if v is not None})


def _settle(model: Teacher, dataset: Dataset,
            pairs: pl.DataFrame) -> tuple[pl.DataFrame | None, PrecisionChoice | None]:
    """Settle a pending precision on a seeded sample of ``pairs``: the sample and the choice (or None)."""
    if not model.precision_pending:
        return None, None
    if not pairs.height:
        raise InputError("no candidate pairs to choose the teacher's precision on")
    sample = pairs.sample(min(SETTLE_PAIRS, pairs.height), seed=0)
    choice = model.settle_precision(dataset.query_texts(sample[QID]), dataset.doc_texts(sample[DOCID]),
                                    total_pairs=pairs.height)
    return sample, choice

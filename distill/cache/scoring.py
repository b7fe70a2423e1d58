"""Scoring candidates with a teacher into the cache, exactly once and resumably."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import polars as pl

from distill.cache.store import TeacherCache, shard_of
from distill.cache.texts import text_hashes, with_text_hashes
from distill.core.errors import ConfigError
from distill.core.progress import progress_display
from distill.core.schema import DOCID, QID, SCORE
from distill.data.beir import Dataset

log = logging.getLogger(__name__)


@dataclass
class ScoreStats:
    """What one ``score-teacher`` run did."""

    candidates: int
    in_shard: int
    already_cached: int
    scored: int
    seconds: float

    @property
    def pairs_per_s(self) -> float:
        return self.scored / self.seconds if self.seconds > 0 else 0.0


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/N"`` → ``(i, N)`` with 0 <= i < N."""
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard must look like i/N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard i/N needs 0 <= i < N, got {text!r}")
    return i, n


def select_shard(pairs: pl.DataFrame, shard: tuple[int, int] | None) -> pl.DataFrame:
    """The deterministic ``i``-th of ``N`` parts of the pairs (all of them without a shard)."""
    if shard is None:
        return pairs
    i, n = shard
    part = shard_of(pairs[QID].to_list(), pairs[DOCID].to_list(), n)
    return pairs.filter(pl.Series(part == i))


def missing_pairs(
    run: pl.DataFrame, cache: TeacherCache, shard: tuple[int, int] | None = None
) -> tuple[pl.DataFrame, ScoreStats]:
    """The (qid, docid) pairs of ``run`` in ``shard`` that the cache lacks, and the counts so far."""
    pairs = run.select(QID, DOCID).unique(maintain_order=True)
    mine = select_shard(pairs, shard)
    todo = cache.missing(mine)
    stats = ScoreStats(candidates=pairs.height, in_shard=mine.height, already_cached=mine.height - todo.height,
                       scored=0, seconds=0.0)
    log.info("%d candidate pairs, %d in this shard, %d already cached, %d to score",
             pairs.height, mine.height, stats.already_cached, todo.height)
    return todo, stats


def with_texts_by_length(dataset: Dataset, todo: pl.DataFrame) -> pl.DataFrame:
    """``todo`` with ``query`` and ``doc`` texts, longest pairs first, so chunks cut from it in
    order hold pairs of similar length and the teacher pads little."""
    todo = todo.with_columns(
        pl.Series("query", dataset.query_texts(todo[QID])), pl.Series("doc", dataset.doc_texts(todo[DOCID])),
    ).with_columns((pl.col("query").str.len_chars() + pl.col("doc").str.len_chars()).alias("_len"))
    return todo.sort("_len", descending=True, maintain_order=True).drop("_len")


def score_into_cache(
    teacher,
    dataset: Dataset,
    run: pl.DataFrame,
    cache: TeacherCache,
    *,
    shard: tuple[int, int] | None = None,
    flush_pairs: int = 1024,
    show_progress: bool = True,
) -> ScoreStats:
    """Score the pairs of ``run`` the cache lacks, writing a shard every ``flush_pairs`` pairs.

    The texts of ``dataset`` are registered first, so pairs whose cached score was computed
    from other texts are scored again; each shard records the hashes of the texts scored.

    Pairs are ordered by text length before chunking, so each chunk holds pairs of similar
    length and the teacher pads little; the teacher sorts by token length within a chunk.
    """
    start = time.perf_counter()
    cache.register_texts(text_hashes(dataset, select_shard(run.select(QID, DOCID).unique(), shard)))
    todo, stats = missing_pairs(run, cache, shard)
    if todo.height == 0:
        return stats
    todo = with_texts_by_length(dataset, todo)
    with _progress(show_progress, todo.height) as advance:
        for offset in range(0, todo.height, flush_pairs):
            chunk = todo.slice(offset, flush_pairs)
            scores = teacher.score(chunk["query"].to_list(), chunk["doc"].to_list(), progress=advance)
            scored = with_text_hashes(chunk.select(QID, DOCID), chunk["query"].to_list(), chunk["doc"].to_list())
            cache.append(scored.with_columns(pl.Series(SCORE, scores)))
            stats.scored += chunk.height
    cache.compact()
    stats.seconds = time.perf_counter() - start
    log.info("scored %d pairs in %.1fs (%.1f pairs/s)", stats.scored, stats.seconds, stats.pairs_per_s)
    return stats


def score_through_cache(
    teacher, dataset: Dataset, pairs: pl.DataFrame, cache: TeacherCache, keep: pl.DataFrame
) -> tuple[np.ndarray, int, int]:
    """Scores of the rows of ``pairs`` (qid, docid), in order; how many came from the cache, and
    how many were added to it.

    Pairs the cache holds are read back; the others are scored, and those among ``keep``
    (the candidates) are appended to the cache, so scoring them later costs nothing.
    """
    cached = pairs.select(QID, DOCID).join(cache.scores(), on=[QID, DOCID], how="left", maintain_order="left")
    scores = cached[SCORE].to_numpy().astype(np.float32, copy=True)
    todo = np.flatnonzero(cached[SCORE].is_null().to_numpy())
    kept = pl.DataFrame(schema={QID: pl.String, DOCID: pl.String})
    if len(todo):
        fresh = cached[todo].select(QID, DOCID)
        queries, docs = dataset.query_texts(fresh[QID]), dataset.doc_texts(fresh[DOCID])
        scores[todo] = teacher.score(queries, docs)
        scored = with_text_hashes(fresh, queries, docs).with_columns(pl.Series(SCORE, scores[todo])) \
            .unique([QID, DOCID], maintain_order=True)
        kept = scored.join(keep.select(QID, DOCID).unique(), on=[QID, DOCID], how="semi")
        if kept.height:
            cache.append(kept)
    return scores, len(pairs) - len(todo), kept.height


class _progress:
    """A rich progress bar with pairs/s and ETA; ``advance(n)`` is the teacher's callback."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        self._bar = progress_display(transient=False, rate_unit="pairs", stderr=False)
        self._bar.start()
        self._task = self._bar.add_task("[bold]scoring", total=self.total, rate="-")
        self._t0 = time.perf_counter()
        self._done = 0

        def advance(n: int) -> None:
            self._done += n
            rate = self._done / max(time.perf_counter() - self._t0, 1e-9)
            self._bar.update(self._task, advance=n, rate=f"{rate:.1f}")

        return advance

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._bar.stop()

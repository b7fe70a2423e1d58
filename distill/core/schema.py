"""The one data contract: column names and dtypes shared by every module.

Tables are polars DataFrames:

- corpus:     ``docid, title, text``
- queries:    ``qid, text``
- qrels:      ``qid, docid, relevance`` (graded, int)
- run:        ``qid, docid, score`` (float), optionally ``rank`` (1-based, per qid)
- candidates: a run without scores is still a run: ``qid, docid`` (+ ``score``, ``rank``)
- teacher scores (the cache): ``qid, docid, score`` (float32 raw logits)
"""

from __future__ import annotations

import polars as pl

from distill.core.errors import InputError

QID = "qid"
DOCID = "docid"
SCORE = "score"
RANK = "rank"
RELEVANCE = "relevance"
TITLE = "title"
TEXT = "text"

CORPUS_SCHEMA = {DOCID: pl.String, TITLE: pl.String, TEXT: pl.String}
QUERIES_SCHEMA = {QID: pl.String, TEXT: pl.String}
QRELS_SCHEMA = {QID: pl.String, DOCID: pl.String, RELEVANCE: pl.Int32}
RELEVANCE_RANGE = (-(2**31), 2**31 - 1)  # the grades QRELS_SCHEMA's Int32 column holds
RUN_SCHEMA = {QID: pl.String, DOCID: pl.String, SCORE: pl.Float64}
SCORES_SCHEMA = {QID: pl.String, DOCID: pl.String, SCORE: pl.Float32}


def require_columns(frame: pl.DataFrame, columns: list[str] | dict, what: str) -> None:
    """Raise :class:`InputError` naming ``what`` when a column is missing."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(f"{what} lacks column(s) {missing}; has {frame.columns}")


def with_ranks(run: pl.DataFrame) -> pl.DataFrame:
    """Sort a run by qid then descending score and (re)number ``rank`` from 1."""
    run = run.sort([QID, SCORE, DOCID], descending=[False, True, False])
    return run.with_columns(pl.int_range(1, pl.len() + 1).over(QID).cast(pl.Int32).alias(RANK))


def cut(run: pl.DataFrame, k: int) -> pl.DataFrame:
    """The top ``k`` documents of every query of a run (by score)."""
    return with_ranks(run).filter(pl.col(RANK) <= k)

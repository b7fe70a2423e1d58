"""A quick check that a teacher ranks judged positives above unjudged candidates.

A teacher with the wrong template, a flipped label order or a random head fails it, and a
cache built from such a teacher would teach the students nothing; this catches that in a
few seconds, before hours of scoring. Given the cache being filled, it reads back the pairs
already scored (preferring them as negatives) and keeps the candidate pairs it scores.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from distill.core.errors import InputError
from distill.core.schema import DOCID, QID, RELEVANCE
from distill.data.beir import Dataset
from teachers.base import Teacher

if TYPE_CHECKING:
    from distill.cache.store import TeacherCache

logger = logging.getLogger(__name__)

MIN_WIN_RATE = 0.6


def check_teacher(
    teacher: Teacher, dataset: Dataset, run: pl.DataFrame, n_queries: int = 20, seed: int = 0,
    n_negatives: int = 4, min_win_rate: float = MIN_WIN_RATE, cache: TeacherCache | None = None,
) -> dict[str, Any]:
    """Score, for up to ``n_queries`` queries of ``run`` with judged positives, those positives
    and ``n_negatives`` unjudged candidates of ``run``.

    Returns ``pos_mean``, ``neg_mean`` (over pairs), ``win_rate`` (share of queries whose mean
    positive score beats their median negative score), ``n_queries``, ``n_pairs``, ``reused``
    (pairs read from ``cache``), ``kept`` (pairs added to it) and ``ok`` (positives above
    negatives on average and ``win_rate >= min_win_rate``). Logs a warning when not ok. With
    ``cache``, negatives the cache already scored are drawn first, and the candidate pairs
    scored here are added to it.
    """
    qrels = dataset.qrels.join(run.select(QID).unique(), on=QID, how="semi")
    positives = qrels.filter(pl.col(RELEVANCE) > 0).group_by(QID).agg(pl.col(DOCID).sort())
    unjudged = (run.select(QID, DOCID).join(qrels.select(QID, DOCID), on=[QID, DOCID], how="anti")
                .group_by(QID).agg(pl.col(DOCID).unique().sort()))
    candidates = positives.join(unjudged, on=QID, suffix="_neg").sort(QID)
    if candidates.is_empty():
        raise InputError("no query of the run has both a judged positive and an unjudged candidate")
    rng = random.Random(seed)
    rows = rng.sample(candidates.rows(), k=min(n_queries, candidates.height))
    scored = set(cache.scores().select(QID, DOCID).iter_rows()) if cache is not None else set()
    qids, docids, labels = [], [], []
    for qid, pos, neg in rows:
        for docid, label in [(d, 1) for d in pos] + [(d, 0) for d in _negatives(rng, qid, neg, n_negatives, scored)]:
            qids.append(qid)
            docids.append(docid)
            labels.append(label)
    pairs = pl.DataFrame({QID: qids, DOCID: docids}, schema={QID: pl.String, DOCID: pl.String})
    if cache is None:
        scores, reused, kept = teacher.score(dataset.query_texts(qids), dataset.doc_texts(docids)), 0, 0
    else:
        from distill.cache.scoring import score_through_cache

        scores, reused, kept = score_through_cache(teacher, dataset, pairs, cache, keep=run)
    frame = pl.DataFrame({QID: qids, "label": labels, "score": scores.astype(np.float64)})
    per_query = frame.group_by(QID).agg(
        pl.col("score").filter(pl.col("label") == 1).mean().alias("pos"),
        pl.col("score").filter(pl.col("label") == 0).median().alias("neg"),
    )
    report = {
        "n_queries": len(rows),
        "n_pairs": len(labels),
        "reused": reused,
        "kept": kept,
        "pos_mean": float(frame.filter(pl.col("label") == 1)["score"].mean()),
        "neg_mean": float(frame.filter(pl.col("label") == 0)["score"].mean()),
        "win_rate": float((per_query["pos"] > per_query["neg"]).mean()),
    }
    report["ok"] = report["pos_mean"] > report["neg_mean"] and report["win_rate"] >= min_win_rate
    if not report["ok"]:
        logger.warning(
            "%s does not rank judged positives above unjudged candidates (positives %.3f vs negatives %.3f on "
            "average; %.0f%% of %d queries win): check the model, its template and its label order",
            teacher.name, report["pos_mean"], report["neg_mean"], 100 * report["win_rate"], len(rows),
        )
    return report


def _negatives(rng: random.Random, qid: str, docids: list[str], k: int, scored: set[tuple[str, str]]) -> list[str]:
    """``k`` of a query's unjudged candidates, drawn at random, those already scored first."""
    done = [d for d in docids if (qid, d) in scored]
    rest = [d for d in docids if (qid, d) not in scored]
    first = rng.sample(done, k=min(k, len(done)))
    return first + rng.sample(rest, k=min(k - len(first), len(rest)))

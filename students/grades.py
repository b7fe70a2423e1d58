"""Integer relevance grades from teacher scores, for ranking objectives that need labels.

LambdaMART (LightGBM's ``lambdarank``) and ``rank_xendcg`` learn from integer grades, while
a teacher gives raw logits whose scale and offset differ between queries and teachers. Grades
are therefore made per query from the order of the scores only (or, with ``"linear"``, from
their position between the query's minimum and maximum), so any increasing transformation of
a query's scores gives the same grades.

:func:`mix_qrels` blends those grades with the qrels where a query has judgements, the
LambdaMART counterpart of the neural students' hard-label term.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from distill.core.errors import ConfigError
from distill.core.schema import DOCID, QID, RELEVANCE, SCORE, require_columns

GRADE = "grade"


def _quantile(score: pl.Expr, n_grades: int) -> pl.Expr:
    # equal-sized rank bins: the best 1/n_grades of a list get the top grade; ties share the best rank
    rank = score.rank("min", descending=True).over(QID) - 1
    size = pl.len().over(QID)
    return (n_grades - 1) - (rank * n_grades // size)


def _linear(score: pl.Expr, n_grades: int) -> pl.Expr:
    # equal-width bins between the query's lowest and highest score (a one-score or flat list is all top)
    low, high = score.min().over(QID), score.max().over(QID)
    position = pl.when(high > low).then((score - low) / (high - low)).otherwise(1.0)
    return (position * n_grades).floor().clip(0, n_grades - 1)


def _log_rank(score: pl.Expr, n_grades: int) -> pl.Expr:
    # top-heavy rank bins that double in size: rank 1, 2-3, 4-7, 8-15, ... (the rest get 0), so the
    # grades separate the documents that an NDCG@10 cares about whatever the list's length
    rank = score.rank("min", descending=True).over(QID)
    return ((n_grades - 1) - rank.log(2).floor()).clip(0, n_grades - 1)


GRADINGS = {"quantile": _quantile, "linear": _linear, "log_rank": _log_rank}


def teacher_grades(run_with_scores: pl.DataFrame, n_grades: int = 5, method: str = "quantile") -> pl.Series:
    """Grades ``0 .. n_grades - 1`` (Int32, named ``grade``), aligned with the rows of ``run_with_scores``.

    Per query (``qid``) and from ``score``: the top-scored document gets ``n_grades - 1`` and
    equal scores get equal grades. ``method``: ``"quantile"`` (rank bins of equal size),
    ``"log_rank"`` (rank bins 1, 2-3, 4-7, ...) or ``"linear"`` (bins of equal width between
    the query's min and max score).
    """
    if method not in GRADINGS:
        raise ConfigError(f"unknown grading {method!r}; choose one of {sorted(GRADINGS)}", field="method")
    if n_grades < 2:
        raise ConfigError(f"n_grades must be at least 2, got {n_grades}", field="n_grades")
    require_columns(run_with_scores, [QID, SCORE], "scored run")
    grade = GRADINGS[method](pl.col(SCORE).cast(pl.Float64), n_grades)
    return run_with_scores.select(grade.cast(pl.Int32).alias(GRADE)).to_series()


def mix_qrels(run: pl.DataFrame, grades: np.ndarray, qrels: pl.DataFrame, n_grades: int, weight: float) -> np.ndarray:
    """Integer labels ``round((1 - weight) * grade + weight * judged)`` for the rows of ``run``.

    ``judged`` is a candidate's qrels relevance scaled to ``0 .. n_grades - 1`` (the qrels'
    highest relevance maps to the top grade; an unjudged candidate is 0). Queries without a
    positive judgement keep their ``grades``: a teacher is what labels unjudged queries.
    ``weight`` 0 is the teacher alone, 1 the qrels alone (plain learning to rank).
    """
    if not 0.0 <= weight <= 1.0:
        raise ConfigError(f"the qrels weight must be in [0, 1], got {weight}", field="qrels_weight")
    require_columns(run, [QID, DOCID], "run")
    grades = np.asarray(grades, dtype=np.float64)
    if weight == 0.0:
        return grades.astype(np.int32)
    positive = qrels.filter(pl.col(RELEVANCE) > 0)
    top = positive[RELEVANCE].max() if positive.height else 1
    judged = (run.select(QID, DOCID)
              .join(positive.select(QID, DOCID, RELEVANCE), on=[QID, DOCID], how="left", maintain_order="left")
              [RELEVANCE].fill_null(0).to_numpy() * (n_grades - 1) / top)
    has_qrels = run[QID].is_in(positive[QID].unique().implode()).to_numpy()
    mixed = np.where(has_qrels, (1.0 - weight) * grades + weight * judged, grades)
    return np.rint(mixed).astype(np.int32)

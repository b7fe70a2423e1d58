"""How closely a student orders the candidates the way its teacher does.

Quality metrics only look at judged documents; agreement looks at every candidate, so it
shows what the student learned from the teacher even where the qrels are silent.
Per query: Kendall's tau, top-k overlap, Pearson and Spearman correlation of the scores;
plus Pearson and Spearman over all (query, document) pairs pooled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from distill.core.errors import InputError
from distill.core.schema import DOCID, QID, SCORE, require_columns

STUDENT, TEACHER = "student", "teacher"


@dataclass
class Agreement:
    """``per_query``: ``qid, n, kendall_tau, overlap@k, pearson, spearman``;
    ``means``: the per-query means (NaN queries left out) plus ``pearson_pooled``, ``spearman_pooled``."""

    per_query: pl.DataFrame
    means: dict[str, float]


def _correlation(name: str, a: np.ndarray, b: np.ndarray) -> float:
    """A scipy correlation, NaN (without scipy's warning) where it is undefined:
    fewer than two candidates, or constant scores on either side."""
    from scipy import stats

    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    fn = {"kendall_tau": stats.kendalltau, "pearson": stats.pearsonr, "spearman": stats.spearmanr}[name]
    return float(fn(a, b).statistic)


def _top(group: pl.DataFrame, column: str, k: int) -> set[str]:
    # Ties broken by docid, the same rule as distill.core.schema.with_ranks.
    return set(group.sort([column, DOCID], descending=[True, False]).head(k)[DOCID].to_list())


def teacher_agreement(student: pl.DataFrame, teacher: pl.DataFrame, k: int = 10) -> Agreement:
    """Agreement of a student run with the teacher's scores on the candidates both scored.

    Rows with a non-finite score (e.g. ``-inf`` for a candidate a run file lacks) are left
    out. Top-k overlap is ``|top_k(student) & top_k(teacher)| / min(k, n)``, so a query with
    fewer than ``k`` candidates can still reach 1.
    """
    require_columns(student, [QID, DOCID, SCORE], "student run")
    require_columns(teacher, [QID, DOCID, SCORE], "teacher scores")
    joined = (
        student.select(QID, DOCID, pl.col(SCORE).cast(pl.Float64).alias(STUDENT))
        .join(teacher.select(QID, DOCID, pl.col(SCORE).cast(pl.Float64).alias(TEACHER)), on=[QID, DOCID])
        .filter(pl.col(STUDENT).is_finite() & pl.col(TEACHER).is_finite())
    )
    if joined.height == 0:
        raise InputError("the student and the teacher share no scored (qid, docid) rows")
    overlap = f"overlap@{k}"
    rows = []
    for (qid,), group in sorted(joined.partition_by(QID, as_dict=True).items()):
        s, t = group[STUDENT].to_numpy(), group[TEACHER].to_numpy()
        rows.append({
            QID: qid,
            "n": group.height,
            "kendall_tau": _correlation("kendall_tau", s, t),
            overlap: len(_top(group, STUDENT, k) & _top(group, TEACHER, k)) / min(k, group.height),
            "pearson": _correlation("pearson", s, t),
            "spearman": _correlation("spearman", s, t),
        })
    per_query = pl.DataFrame(rows).with_columns(pl.col("n").cast(pl.Int32))
    columns = ["kendall_tau", overlap, "pearson", "spearman"]
    means = {c: _nan_mean(per_query[c]) for c in columns}
    s, t = joined[STUDENT].to_numpy(), joined[TEACHER].to_numpy()
    means["pearson_pooled"] = _correlation("pearson", s, t)
    means["spearman_pooled"] = _correlation("spearman", s, t)
    return Agreement(per_query=per_query, means=means)


def _nan_mean(values: pl.Series) -> float:
    mean = values.fill_nan(None).mean()
    return math.nan if mean is None else float(mean)

"""The scale of a teacher's scores, per query, and the loss temperature it suggests.

Teachers differ in scale by an order of magnitude: a cross-encoder trained here may spread
a query's candidates over about one logit, an off-the-shelf one over twenty. A listwise
loss turns the teacher's scores into a target distribution ``softmax(teacher / T)``: with
``T = 1`` the first teacher's target is nearly uniform (nothing to learn) and the second's
nearly one-hot (only the top document counts). Dividing by the typical per-query spread
puts every teacher on the same footing, so that is the default temperature
(:meth:`ScoreScale.temperature`). On the demo's valid split the bi-encoder student reached
nDCG@10 0.755 with ListNet at ``T = 0.2`` (close to its teacher's median per-query std)
against 0.265 at ``T = 1``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import polars as pl

from distill.core.schema import QID, SCORE, require_columns

# losses whose ``temperature`` divides the teacher's scores (distill.training.losses)
TEMPERATURE_LOSSES = ("KLDiv", "ListNet", "LambdaLoss")
# losses that regress the teacher's raw scores or margins: the teacher's scores are divided by their
# typical per-query spread first. On the demo's data a teacher after one epoch spread a query's top 10
# over 0.13 logits (median std 0.04): MarginMSE on such margins asks the student for near-constant scores
SCALED_LOSSES = ("MarginMSE", "MSE")


@dataclass(frozen=True)
class ScoreScale:
    """Per-query statistics of teacher scores, summarised over queries (medians, and the 10th and
    90th percentiles of the spread)."""

    queries: int
    pairs: int
    std_median: float  # per-query standard deviation of the scores
    std_p10: float
    std_p90: float
    range_median: float  # per-query max - min
    margin_median: float  # per-query top-1 minus top-2 (how decisive the best document is)
    top_gap_median: float  # per-query top-1 minus the median (how far the best stands out)

    def temperature(self) -> float:
        """The default temperature of a listwise loss: the median per-query std (at least 1e-3),
        so ``teacher / T`` spreads each query's candidates over about one unit."""
        return round(max(self.std_median, 1e-3), 4)

    def to_dict(self) -> dict:
        return {**asdict(self), "suggested_temperature": self.temperature()}


def score_scale(scores: pl.DataFrame) -> ScoreScale:
    """:class:`ScoreScale` of ``qid, docid, score`` rows (queries with one candidate count only for
    ``queries`` and ``pairs``)."""
    require_columns(scores, [QID, SCORE], "teacher scores")
    per_query = (
        scores.select(QID, pl.col(SCORE).cast(pl.Float64))
        .group_by(QID)
        .agg(
            pl.col(SCORE).std(ddof=0).alias("std"),
            (pl.col(SCORE).max() - pl.col(SCORE).min()).alias("range"),
            (pl.col(SCORE).sort(descending=True).get(0) - pl.col(SCORE).sort(descending=True).get(1, null_on_oob=True))
            .alias("margin"),
            (pl.col(SCORE).max() - pl.col(SCORE).median()).alias("top_gap"),
            pl.len().alias("n"),
        )
    )
    several = per_query.filter(pl.col("n") > 1)

    def stat(column: str, q: float = 0.5) -> float:
        if several.height == 0:
            return math.nan
        return float(several[column].quantile(q, interpolation="linear"))

    return ScoreScale(
        queries=per_query.height, pairs=scores.height, std_median=stat("std"), std_p10=stat("std", 0.1),
        std_p90=stat("std", 0.9), range_median=stat("range"), margin_median=stat("margin"),
        top_gap_median=stat("top_gap"),
    )


def teacher_divisor(loss: str, scale: ScoreScale) -> float | None:
    """What the teacher's scores are divided by before a regression loss (:data:`SCALED_LOSSES`) sees
    them: the median per-query std, so margins come in units of the teacher's typical spread; None
    for other losses (a temperature does that job) or an unknown scale."""
    if loss.lower() in (n.lower() for n in SCALED_LOSSES) and not math.isnan(scale.std_median):
        return scale.temperature()
    return None


def default_loss_params(loss: str, params: dict, scale: ScoreScale) -> dict:
    """``params`` with a temperature from the teacher's scale for a listwise loss that was given none."""
    if loss.lower() in (n.lower() for n in TEMPERATURE_LOSSES) and "temperature" not in params:
        if not math.isnan(scale.std_median):
            return {**params, "temperature": scale.temperature()}
    return dict(params)


def describe_scale(scale: ScoreScale) -> str:
    """Lines for ``distill cache info``: the per-query spread and margins, and what they imply."""
    return (
        f"score scale over {scale.queries} queries with {scale.pairs} scores (per query, median over queries):\n"
        f"  std {scale.std_median:.4g} (10th-90th percentile {scale.std_p10:.4g}-{scale.std_p90:.4g}), "
        f"range {scale.range_median:.4g}\n"
        f"  margin top-1 minus top-2 {scale.margin_median:.4g}, top-1 minus median {scale.top_gap_median:.4g}\n"
        f"  default temperature of a listwise loss (KLDiv, ListNet, LambdaLoss): {scale.temperature():.4g}"
    )

"""Paired significance of each ranker against the baseline, per metric.

Every ranker reranks the same candidates, so per-query metric values pair up across rankers.
ir-measures has no paired significance test, so the paired t-test and the Wilcoxon signed-rank
test come from scipy.stats, with Holm (default) or Bonferroni correction across the rankers
compared to the baseline, separately for each metric.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from distill.core.schema import QID

#: The column naming the ranker in every table of an evaluation.
RANKER = "ranker"
#: The family-wise corrections :func:`adjust_p_values` knows.
CORRECTIONS = ("holm", "bonferroni")


def significance_table(values: pl.DataFrame, names: list[str], baseline: str, metrics: tuple[str, ...],
                       correction: str) -> pl.DataFrame:
    """One row per (ranker other than ``baseline``, metric) of the per-query ``values`` (``ranker, qid,
    metric, value``): :func:`paired_tests` against the baseline and their p-values corrected across
    the rankers (:func:`adjust_p_values`)."""
    others = [n for n in names if n != baseline]
    rows = []
    for metric in metrics:
        wide = values.filter(pl.col("metric") == metric).pivot(RANKER, index=QID, values="value").sort(QID)
        base = wide[baseline].to_numpy()
        tests = [paired_tests(wide[name].to_numpy(), base) for name in others]
        p_t = adjust_p_values(np.array([t["p_ttest"] for t in tests]), correction)
        p_w = adjust_p_values(np.array([t["p_wilcoxon"] for t in tests]), correction)
        for i, (name, test) in enumerate(zip(others, tests, strict=True)):
            rows.append({RANKER: name, "metric": metric, **test,
                         "p_ttest_adj": float(p_t[i]), "p_wilcoxon_adj": float(p_w[i])})
    schema = {RANKER: pl.String, "metric": pl.String, "mean_delta": pl.Float64, "wins": pl.Int64,
              "losses": pl.Int64, "ties": pl.Int64, "t_statistic": pl.Float64, "p_ttest": pl.Float64,
              "p_wilcoxon": pl.Float64, "p_ttest_adj": pl.Float64, "p_wilcoxon_adj": pl.Float64}
    return pl.DataFrame(rows, schema=schema)


def wins_losses_ties(significance: pl.DataFrame, metric: str) -> pl.DataFrame:
    """Wins, losses and ties on ``metric`` by ranker; the baseline has none (left null by a join)."""
    return significance.filter(pl.col("metric") == metric).select(RANKER, "wins", "losses", "ties")


def paired_tests(system: np.ndarray, baseline: np.ndarray) -> dict[str, float]:
    """Paired t-test and Wilcoxon signed-rank test (scipy) of per-query values vs a baseline.

    Where every difference is zero both p-values are 1 (no evidence of a difference; scipy
    would return NaN with a warning); with fewer than two queries they are NaN.
    """
    from scipy import stats

    delta = system - baseline
    counts = {"wins": int((delta > 0).sum()), "losses": int((delta < 0).sum()),
              "ties": int((delta == 0).sum())}
    mean_delta = float(delta.mean()) if len(delta) else math.nan
    if len(delta) < 2:
        return {"mean_delta": mean_delta, **counts, "t_statistic": math.nan, "p_ttest": math.nan,
                "p_wilcoxon": math.nan}
    if not delta.any():
        return {"mean_delta": 0.0, **counts, "t_statistic": 0.0, "p_ttest": 1.0, "p_wilcoxon": 1.0}
    t = stats.ttest_rel(system, baseline)
    w = stats.wilcoxon(system, baseline)
    return {"mean_delta": mean_delta, **counts, "t_statistic": float(t.statistic), "p_ttest": float(t.pvalue),
            "p_wilcoxon": float(w.pvalue)}


def adjust_p_values(p: np.ndarray, correction: str = "holm") -> np.ndarray:
    """Family-wise correction of p-values; NaN stays NaN and does not count in the family.

    Written here because scipy only offers false-discovery-rate control
    (``scipy.stats.false_discovery_control``), not Holm or Bonferroni.
    """
    out = np.full(len(p), np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = len(valid)
    if m == 0:
        return out
    if correction == "bonferroni":
        out[valid] = np.minimum(p[valid] * m, 1.0)
        return out
    order = valid[np.argsort(p[valid], kind="stable")]
    # Holm: the i-th smallest p (0-based) times (m - i), kept monotone.
    out[order] = np.minimum(np.maximum.accumulate(p[order] * (m - np.arange(m))), 1.0)
    return out

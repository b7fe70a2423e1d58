"""Rerank depth: each ranker's quality when it reranks only the first stage's top k.

Reranking deeper lists raises recall but also brings in more distractors, and a weak
reranker can rank some of them above the relevant documents, so its quality falls as k
grows while the first stage's stays put. Restricting every ranker to the first stage's top k,
for growing k, shows where that happens, from the scores an evaluation already holds (no
model runs again). On SciFact, the 2-layer cross-encoder student reached nDCG@10 0.535 over
BM25's top 10 but 0.157 over its top 100 (BM25: 0.679 at every depth); training it on the
top 100 instead of the top 30 did not change that (0.163).
"""

from __future__ import annotations

import polars as pl

from distill.core.errors import ConfigError
from distill.core.schema import DOCID, QID, RANK, with_ranks
from distill.evaluation.metrics import metric_means

DEFAULT_DEPTHS = (10, 20, 30, 50)


def depth_curve(qrels: pl.DataFrame, runs: dict[str, pl.DataFrame], first_stage: pl.DataFrame,
                metric: str, depths: tuple[int, ...] = DEFAULT_DEPTHS) -> pl.DataFrame:
    """``ranker, depth, value``: the mean of ``metric`` over the queries of ``qrels`` when each
    run keeps only the documents of ``first_stage``'s top ``depth`` per query.

    Depths at or beyond the first stage's longest list become that length, which is always
    included: its row is the ranker's quality over the whole candidate lists.
    """
    if any(d < 1 for d in depths):
        raise ConfigError(f"rerank depths must be >= 1, got {list(depths)}", field="--depths")
    ranked = with_ranks(first_stage)
    longest = int(ranked[RANK].max() or 0)
    rows = []
    for depth in sorted({min(d, longest) for d in depths} | {longest}):
        keep = ranked.filter(pl.col(RANK) <= depth).select(QID, DOCID)
        for name, run in runs.items():
            value = metric_means(qrels, run.join(keep, on=[QID, DOCID], how="semi"), [metric])[metric]
            rows.append({"ranker": name, "depth": depth, "value": value})
    return pl.DataFrame(rows, schema={"ranker": pl.String, "depth": pl.Int32, "value": pl.Float64})


def depth_table(curve: pl.DataFrame) -> pl.DataFrame:
    """One row per ranker, one column per depth (``top-10``, ...): for reports."""
    wide = curve.with_columns(("top-" + pl.col("depth").cast(pl.String)).alias("depth"))
    return wide.pivot("depth", index="ranker", values="value", maintain_order=True)

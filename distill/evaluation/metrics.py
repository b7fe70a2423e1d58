"""Retrieval metrics from ir-measures (pytrec_eval underneath), aggregated and per query.

Metric names are ir-measures' own (``nDCG@10``, ``RR@10``, ``R@100``, ``AP``). Queries of
the qrels that a run lacks count as zero, as in trec_eval's ``-c``: a ranker that drops
queries must not look better for it.
"""

from __future__ import annotations

import polars as pl

from distill.core.schema import DOCID, QID, RELEVANCE, SCORE

DEFAULT_METRICS = ("nDCG@10", "RR@10", "R@100", "AP")


def _parse(metrics: tuple[str, ...] | list[str]):
    import ir_measures

    return [ir_measures.parse_measure(m) for m in metrics]


def per_query(qrels: pl.DataFrame, run: pl.DataFrame, metrics=DEFAULT_METRICS) -> pl.DataFrame:
    """One row per (query of the qrels, metric): ``qid, metric, value``."""
    import ir_measures

    measures = _parse(metrics)
    qrels_iter = [ir_measures.Qrel(q, d, int(r)) for q, d, r in qrels.select(QID, DOCID, RELEVANCE).iter_rows()]
    run_iter = [ir_measures.ScoredDoc(q, d, float(s)) for q, d, s in run.select(QID, DOCID, SCORE).iter_rows()]
    rows = [(m.query_id, str(m.measure), float(m.value)) for m in ir_measures.iter_calc(measures, qrels_iter, run_iter)]
    found = pl.DataFrame(rows, schema={QID: pl.String, "metric": pl.String, "value": pl.Float64}, orient="row")
    grid = qrels.select(QID).unique().join(pl.DataFrame({"metric": [str(m) for m in measures]}), how="cross")
    return (
        grid.join(found, on=[QID, "metric"], how="left")
        .with_columns(pl.col("value").fill_null(0.0))
        .sort(["metric", QID])
    )


def metric_means(qrels: pl.DataFrame, run: pl.DataFrame, metrics=DEFAULT_METRICS) -> dict[str, float]:
    """Mean of each metric over the queries of ``qrels`` (for a whole comparison of rankers, see
    :func:`distill.evaluation.runner.evaluate`)."""
    table = per_query(qrels, run, metrics)
    means = table.group_by("metric").agg(pl.col("value").mean())
    order = [str(m) for m in _parse(metrics)]
    values = dict(zip(means["metric"].to_list(), means["value"].to_list()))
    return {m: values[m] for m in order}

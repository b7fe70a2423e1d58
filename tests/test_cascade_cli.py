"""The ``distill cascade`` command line (build, run, budget shares, stage costs) and cascades among the rest of
distill: measured costs, precision settled on a sample, latency under the evaluated name and in the report.

Rankers here are tests/test_cascade.py's :class:`Planted` fakes, so every expected ranking is known.
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import typer
from test_cascade import Planted
from typer.testing import CliRunner

from distill.cascade.model import Stage, stage
from distill.core.errors import ConfigError
from distill.core.schema import CORPUS_SCHEMA, DOCID, QID, QUERIES_SCHEMA, RELEVANCE, SCORE
from distill.data.beir import Dataset
from distill.data.runs import read_run, write_run


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    from distill.app.commands.cascade import register

    app = typer.Typer()
    app.command("noop")(lambda: None)  # a second command keeps `cascade` a sub-command
    register(app)
    return app


def test_cli_build_and_run(cli, tiny_beir, tmp_path):
    from distill.data.beir import load_beir
    from distill.data.bm25 import bm25_run

    dataset = load_beir(tiny_beir, "test")
    candidates = bm25_run(dataset, k=20)
    write_run(candidates, tmp_path / "cands.trec", tag="bm25")
    rng = np.random.default_rng(0)
    judged = candidates.join(dataset.qrels, on=[QID, DOCID], how="left").with_columns(
        pl.col(RELEVANCE).fill_null(0))
    write_run(judged.with_columns((pl.col(RELEVANCE) + rng.random(judged.height) * 0.1).alias(SCORE)),
              tmp_path / "good.trec", tag="good")
    write_run(judged.with_columns(pl.Series(SCORE, rng.random(judged.height))), tmp_path / "noise.trec", tag="noise")

    runner = CliRunner()
    spec = tmp_path / "cascade.json"
    built = runner.invoke(cli, [
        "cascade", "build", "--data", str(tiny_beir), "--split", "test", "--run", str(tmp_path / "cands.trec"),
        "--stage", "bm25=bm25", "--stage", f"noise={tmp_path / 'noise.trec'}", "--stage",
        f"good={tmp_path / 'good.trec'}", "--cost", "noise=0.01", "--cost", "good=1", "--budget-ms", "15",
        "--cutoffs", "20,10,5", "--out", str(spec),
    ])
    assert built.exit_code == 0, built.output
    assert "Pareto frontier" in built.output
    body = json.loads(spec.read_text())
    assert body["stages"][0] == {"name": "bm25", "ranker": "bm25", "cutoff": body["stages"][0]["cutoff"]}
    assert body["stages"][-1]["name"] == "good"  # the perfect stage is affordable at 10 pairs
    assert body["provenance"]["validation"]["nDCG@10"] == pytest.approx(body["provenance"]["chosen"]["value"])

    out = tmp_path / "out" / "run.trec"
    # a generous budget: skips would depend on this machine's speed
    ran = runner.invoke(cli, ["cascade", "run", str(spec), "--data", str(tiny_beir), "--split", "test",
                              "--run", str(tmp_path / "cands.trec"), "--out", str(out), "--budget-ms", "1e4"])
    assert ran.exit_code == 0, ran.output
    assert "p95" in ran.output and "skipped" in ran.output
    assert read_run(out).height == candidates.height
    report = json.loads((out.parent / "run.trec.json").read_text())
    assert report["metrics"]["nDCG@10"] == pytest.approx(body["provenance"]["validation"]["nDCG@10"])
    assert report["latency"]["skipped"] == {s["name"]: 0 for s in body["stages"]}


def test_budget_share_is_that_share_of_the_stages_latency(cli, tiny_beir, tmp_path):
    from distill.data.beir import load_beir
    from distill.data.bm25 import bm25_run

    candidates = bm25_run(load_beir(tiny_beir, "test"), k=20)
    write_run(candidates, tmp_path / "c.trec", tag="bm25")
    pairs = candidates.group_by(QID).len()["len"].clip(upper_bound=100).mean()
    argv = ["cascade", "build", "--data", str(tiny_beir), "--split", "test", "--run", str(tmp_path / "c.trec"),
            "--stage", "bm25=bm25", "--stage", f"x={tmp_path / 'c.trec'}", "--cost", "x=2+3",
            "--out", str(tmp_path / "s.json")]
    result = CliRunner().invoke(cli, [*argv, "--budget-share", "x=0.25"])
    assert result.exit_code == 0, result.output
    body = json.loads((tmp_path / "s.json").read_text())
    assert body["budget_ms"] == pytest.approx(0.25 * (3 + 2 * pairs))  # share x (per query + per pair x pairs)
    assert body["provenance"]["budget_share"] == {"stage": "x", "share": 0.25}
    for bad in (["--budget-share", "y=0.1"], ["--budget-share", "x=2"], ["--budget-share", "x=0.1", "--budget-ms", "5"],
                []):
        result = CliRunner().invoke(cli, [*argv, *bad])
        assert isinstance(result.exception, ConfigError), (bad, result.output)


def test_cli_needs_the_cost_of_stored_scores(cli, tiny_beir, tmp_path):
    from distill.data.beir import load_beir
    from distill.data.bm25 import bm25_run

    write_run(bm25_run(load_beir(tiny_beir, "test"), k=10), tmp_path / "c.trec", tag="bm25")
    result = CliRunner().invoke(cli, [
        "cascade", "build", "--data", str(tiny_beir), "--split", "test", "--run", str(tmp_path / "c.trec"),
        "--stage", "bm25=bm25", "--stage", f"x={tmp_path / 'c.trec'}", "--budget-ms", "5", "--out",
        str(tmp_path / "s.json"),
    ])
    assert isinstance(result.exception, ConfigError) and "--cost x=" in str(result.exception)
    # --cost-from measures another ranker in its place ('bm25' here: the plumbing, not a model)
    result = CliRunner().invoke(cli, [
        "cascade", "build", "--data", str(tiny_beir), "--split", "test", "--run", str(tmp_path / "c.trec"),
        "--stage", "bm25=bm25", "--stage", f"x={tmp_path / 'c.trec'}", "--cost-from", "x=bm25", "--budget-ms", "5",
        "--out", str(tmp_path / "s.json"),
    ])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "s.json").read_text())["provenance"]["candidate_stages"]["x"]["cost_source"]


def test_measured_cost(tiny_beir):
    """Costs of a model stage come from distill.evaluation.latency.measure_latency at k/10 and k pairs."""
    from distill.cascade.search import CascadeBuildConfig, _measure_cost
    from distill.data.beir import load_beir
    from distill.data.bm25 import bm25_run

    dataset = load_beir(tiny_beir, "test")
    candidates = bm25_run(dataset, k=20)
    ranker = Planted("p", {(q, d): s for q, d, s in candidates.select(QID, DOCID, SCORE).iter_rows()})
    cost, source = _measure_cost(stage("p", ranker, "planted"), dataset, candidates,
                                 CascadeBuildConfig(latency_queries=3, latency_k=20))
    assert cost.per_pair_ms >= 0 and cost.per_query_ms >= 0
    assert "2.0 pairs" in source and "20.0 pairs" in source
    assert len(ranker.calls) == 2 * (3 + 3)  # warm-up and timed queries at both sizes


def test_stage_is_a_frozen_record():
    s = Stage("a", Planted("a", {}), 3, "spec")
    assert s.cutoff == 3 and (s % 2).cutoff == 2 and s.cutoff == 3


def test_query_by_query_stages_settle_their_precision_on_a_sample_first(tiny_beir):
    """Left to a stage's first call, a reduced precision would be checked on one query's survivors."""
    from distill.data.beir import load_beir

    dataset = load_beir(tiny_beir)
    run = pl.DataFrame({QID: [q for q in dataset.queries[QID] for _ in range(3)],
                        DOCID: dataset.corpus[DOCID].head(3).to_list() * dataset.queries.height})
    first = Planted("first", {(q, d): 1.0 for q, d in run.iter_rows()})
    second = Planted("second", {(q, d): 1.0 for q, d in run.iter_rows()})
    settled = []
    second.settle_precision = lambda queries, docs, total_pairs=None: settled.append(
        (len(queries), total_pairs, len(second.calls)))
    cascade = stage("first", first) % 2 >> stage("second", second)
    cascade.rerank(dataset, run, per_query=True)
    from distill.rankers.base import SETTLE_PAIRS

    # a sample, before any query, of the pairs the run will score
    assert settled == [(min(SETTLE_PAIRS, run.height), run.height, 0)] and run.height > 3
    settled.clear()
    cascade.settle_precision(["q"], ["d"])  # measure_latency's path
    assert settled == [(1, None, dataset.queries.height)]


def test_latency_is_recorded_under_the_evaluated_name(tiny_beir):
    """A cascade's own name is its stages; reports join latency to metrics by the evaluated label."""
    from distill.data.beir import load_beir
    from distill.evaluation.latency import measure_latency

    dataset = load_beir(tiny_beir, "test")
    run = pl.DataFrame({QID: [q for q in dataset.queries[QID] for _ in range(3)],
                        DOCID: dataset.corpus[DOCID].head(3).to_list() * dataset.queries.height,
                        SCORE: [3.0, 2.0, 1.0] * dataset.queries.height})
    planted = Planted("p", {(q, d): 1.0 for q, d in run.select(QID, DOCID).iter_rows()})
    cascade = stage("first", planted) % 2 >> stage("second", planted)
    assert measure_latency(cascade, dataset, run, k=3, n_queries=2, warmup=0).ranker == str(cascade)
    assert measure_latency(cascade, dataset, run, k=3, n_queries=2, warmup=0, name="cascade").ranker == "cascade"


def test_an_evaluated_cascade_has_its_latency_in_the_report(tiny_beir):
    """The report joins latency to metrics by the evaluated name: a cascade's row and Pareto point
    carry its own p50, and the first stage keeps its own (not the cascade's, whose stages it names)."""
    from distill.data.beir import load_beir
    from distill.data.bm25 import bm25_run
    from distill.evaluation.report import comparison_table, quality_latency_points
    from distill.evaluation.runner import EvaluateConfig, evaluate
    from distill.rankers.loading import RunRanker

    dataset = load_beir(tiny_beir, "test")
    run = bm25_run(dataset, 5)
    rng = np.random.default_rng(0)
    planted = Planted("p", {(q, d): float(rng.random()) for q, d in run.select(QID, DOCID).iter_rows()})
    cascade = stage("bm25", RunRanker(), "bm25") % 3 >> stage("p", planted)
    result = evaluate(dataset, run, {"bm25": "bm25", "cascade": cascade},
                      EvaluateConfig(k=5, latency=True, latency_queries=2, depths=(5,)), show_progress=False)
    assert result.latency["cascade"].ranker == "cascade"
    table = comparison_table(result, result.latency).filter(pl.col("ranker") == "cascade")
    assert table["p50 ms"][0] == pytest.approx(result.latency["cascade"].p50_ms)
    points = quality_latency_points(result, result.latency)
    assert points["cascade"][0] == pytest.approx(result.latency["cascade"].p50_ms)
    assert points["bm25"][0] == pytest.approx(result.latency["bm25"].p50_ms)


def test_measured_costs_count_pairs_as_the_runtime_plans_them():
    """cascade build fits a stage's cost per reference pair (its truncation, its passages), the unit the
    runtime multiplies by: a long document or a MaxP stage is not counted twice."""
    from types import SimpleNamespace

    from distill.cascade.search import _reference_pairs
    from distill.inference.passages import PassageConfig

    corpus = pl.DataFrame({DOCID: ["short", "long"], "title": ["", ""], "text": ["x" * 396, "x" * 4092]},
                          schema=CORPUS_SCHEMA)
    queries = pl.DataFrame({QID: ["q"], "text": ["abcd"]}, schema=QUERIES_SCHEMA)
    data = Dataset(corpus=corpus, queries=queries, qrels=pl.DataFrame({QID: ["q"], DOCID: ["long"], RELEVANCE: [1]},
                                                                     schema={QID: pl.String, DOCID: pl.String,
                                                                             RELEVANCE: pl.Int32}))
    run = pl.DataFrame({QID: ["q", "q"], DOCID: ["short", "long"], SCORE: [2.0, 1.0]})
    # pairs of 400 and 4,096 characters (text and query): 100 and 1,024 estimated tokens
    assert _reference_pairs(SimpleNamespace(), data, run, 2) == pytest.approx(1 + 1024 / 256)  # read whole
    assert _reference_pairs(SimpleNamespace(max_length=128), data, run, 2) == 2.0  # truncated: 1 each
    assert _reference_pairs(SimpleNamespace(max_length=128), data, run, 1) == 1.0  # the top 1 only
    maxp = SimpleNamespace(max_length=128, passages=PassageConfig("max", 128, 64))
    assert _reference_pairs(maxp, data, run, 2) == 1 + 1 + (1024 - 128) // 64  # 1 + 15 passages

"""Evaluation: ranker specs, metrics on a hand example, paired tests, teacher agreement,
latency fields, and the ``distill evaluate`` / ``distill report`` commands."""

from __future__ import annotations

import json
import math
import zlib

import numpy as np
import polars as pl
import pytest
from scipy import stats
from tiny import run_cli

from distill.cache.store import TeacherCache
from distill.core.errors import ConfigError, InputError
from distill.core.registry import RANKERS
from distill.core.schema import DOCID, QID, SCORE
from distill.data.beir import Dataset, load_beir
from distill.data.bm25 import bm25_run
from distill.data.runs import read_run, write_run
from distill.evaluation.agreement import teacher_agreement
from distill.evaluation.latency import measure_latency, parameter_count, size_on_disk
from distill.evaluation.runner import EvaluationResult, adjust_p_values, evaluate_rankers, evaluate_runs, paired_tests
from distill.rankers.base import BaseRanker
from distill.rankers.loading import RunRanker, load_ranker, model_folder, parse_ranker_spec

LOG2_3 = math.log2(3)


@pytest.fixture()
def hand() -> tuple[Dataset, pl.DataFrame]:
    """Two queries: q1 has one relevant document (d1), q2 two (d2, d3); the candidate run
    ranks d2 > d1 > d3 for both."""
    corpus = pl.DataFrame({DOCID: ["d1", "d2", "d3"], "title": ["", "", ""], "text": ["a", "b", "c"]})
    queries = pl.DataFrame({QID: ["q1", "q2"], "text": ["x", "y"]})
    qrels = pl.DataFrame({QID: ["q1", "q2", "q2"], DOCID: ["d1", "d2", "d3"], "relevance": [1, 1, 1]},
                         schema={QID: pl.String, DOCID: pl.String, "relevance": pl.Int32})
    run = pl.DataFrame({QID: ["q1"] * 3 + ["q2"] * 3, DOCID: ["d2", "d1", "d3"] * 2,
                        SCORE: [3.0, 2.0, 1.0] * 2})
    return Dataset(corpus=corpus, queries=queries, qrels=qrels, name="hand", split="test"), run


def test_metrics_match_a_hand_computation(hand, tmp_path):
    dataset, run = hand
    # The student's run file lacks (q2, d3): it must rank last (-inf), not vanish.
    student = pl.DataFrame({QID: ["q1", "q1", "q1", "q2", "q2"], DOCID: ["d1", "d2", "d3", "d1", "d2"],
                            SCORE: [3.0, 2.0, 1.0, -1.0, -2.0]})
    write_run(student, tmp_path / "student.trec")
    rankers = {"bm25": load_ranker("bm25"), "student": load_ranker(f"student={tmp_path / 'student.trec'}")}
    result = evaluate_rankers(dataset, run, rankers, baseline="bm25", metrics=("nDCG@10", "RR@10"))

    summary = {row["ranker"]: row for row in result.summary.to_dicts()}
    # bm25: q1 relevant at rank 2; q2 relevant at ranks 1 and 3 (ideal: ranks 1 and 2).
    bm25_q2 = (1 + 1 / 2) / (1 + 1 / LOG2_3)
    assert summary["bm25"]["nDCG@10"] == pytest.approx((1 / LOG2_3 + bm25_q2) / 2)
    assert summary["bm25"]["RR@10"] == pytest.approx((1 / 2 + 1) / 2)
    # student: q1 relevant at rank 1; q2 relevant at ranks 2 and 3 (d3 missing, so last).
    student_q2 = (1 / LOG2_3 + 1 / 2) / (1 + 1 / LOG2_3)
    assert summary["student"]["nDCG@10"] == pytest.approx((1 + student_q2) / 2)
    assert summary["student"]["RR@10"] == pytest.approx((1 + 1 / 2) / 2)
    assert (summary["student"]["wins"], summary["student"]["losses"], summary["student"]["ties"]) == (1, 1, 0)
    assert summary["student"]["n_queries"] == 2 and summary["bm25"]["wins"] is None
    assert result.runs["student"].filter(pl.col(DOCID) == "d3", pl.col(QID) == "q2")[SCORE][0] == -math.inf

    # The significance row is scipy's paired t-test on these hand values.
    tests = result.significance.filter(pl.col("ranker") == "student", pl.col("metric") == "nDCG@10")
    row = tests.row(0, named=True)
    expected = stats.ttest_rel([1.0, student_q2], [1 / LOG2_3, bm25_q2])
    assert row["p_ttest"] == pytest.approx(expected.pvalue)
    assert row["mean_delta"] == pytest.approx((1 + student_q2 - 1 / LOG2_3 - bm25_q2) / 2)


def test_rerank_depth_by_hand(hand):
    dataset, run = hand
    student = pl.DataFrame({QID: ["q1", "q1", "q1", "q2", "q2"], DOCID: ["d1", "d2", "d3", "d1", "d2"],
                            SCORE: [3.0, 2.0, 1.0, -1.0, -2.0]})
    result = evaluate_runs(dataset.qrels, {"bm25": run, "student": student}, "bm25", ("nDCG@10",),
                           first_stage=run, depths=(1, 2, 5))
    curve = {(r["ranker"], r["depth"]): r["value"] for r in result.depth.to_dicts()}
    # depth 5 is beyond the 3 candidates: it becomes 3, the whole lists
    assert sorted({d for _, d in curve}) == [1, 2, 3]
    ideal_q2 = 1 + 1 / LOG2_3  # q2 has two relevant documents
    # top 1 of the first stage is d2 for both queries: relevant to q2 only, whoever reranks it
    assert curve["bm25", 1] == curve["student", 1] == pytest.approx((0 + 1 / ideal_q2) / 2)
    # top 2 is d2, d1: the student puts d1 first for both queries (relevant to q1, not to q2)
    assert curve["student", 2] == pytest.approx((1 + (1 / LOG2_3) / ideal_q2) / 2)
    assert curve["bm25", 2] == pytest.approx((1 / LOG2_3 + 1 / ideal_q2) / 2)
    for name in ("bm25", "student"):
        assert curve[name, 3] == pytest.approx(result.summary.filter(pl.col("ranker") == name)["nDCG@10"][0])
    assert evaluate_runs(dataset.qrels, {"bm25": run}, "bm25").depth is None
    with pytest.raises(ConfigError, match="depths"):
        evaluate_runs(dataset.qrels, {"bm25": run}, "bm25", first_stage=run, depths=(0, 10))


def test_paired_tests_match_hand_formulas():
    system = np.array([0.5, 0.6, 0.9, 0.4, 1.0])
    base = np.array([0.4, 0.3, 0.5, 0.35, 0.2])
    delta = system - base
    t = delta.mean() / (delta.std(ddof=1) / math.sqrt(len(delta)))
    out = paired_tests(system, base)
    assert out["t_statistic"] == pytest.approx(t)
    assert out["p_ttest"] == pytest.approx(2 * stats.t.sf(abs(t), df=len(delta) - 1))
    # All five differences positive: the exact two-sided signed-rank p-value is 2 / 2**5.
    assert out["p_wilcoxon"] == pytest.approx(2 / 32)
    assert (out["wins"], out["losses"], out["ties"]) == (5, 0, 0)
    same = paired_tests(base, base)
    assert (same["p_ttest"], same["p_wilcoxon"], same["ties"]) == (1.0, 1.0, 5)


def test_holm_and_bonferroni_corrections():
    p = np.array([0.01, 0.04, 0.03, np.nan])
    np.testing.assert_allclose(adjust_p_values(p, "holm")[:3], [0.03, 0.06, 0.06])
    np.testing.assert_allclose(adjust_p_values(p, "bonferroni")[:3], [0.03, 0.12, 0.09])
    assert np.isnan(adjust_p_values(p, "holm")[3])
    np.testing.assert_allclose(adjust_p_values(np.array([0.6, 0.5]), "holm"), [1.0, 1.0])


def _scores(qids: list[str], values: list[list[float]]) -> pl.DataFrame:
    rows = [(q, f"d{i}", v) for q, vs in zip(qids, values, strict=True) for i, v in enumerate(vs)]
    return pl.DataFrame(rows, schema={QID: pl.String, DOCID: pl.String, SCORE: pl.Float64}, orient="row")


def test_agreement_identical_reversed_and_degenerate():
    teacher = _scores(["a", "b"], [list(range(20)), [0.5, 0.1, 0.9]])
    same = teacher_agreement(teacher, teacher)
    assert same.means["kendall_tau"] == pytest.approx(1.0)
    assert same.means["overlap@10"] == pytest.approx(1.0)
    assert same.means["pearson_pooled"] == pytest.approx(1.0)

    reversed_ = teacher.with_columns(-pl.col(SCORE))
    flipped = teacher_agreement(reversed_, teacher)
    assert flipped.means["kendall_tau"] == pytest.approx(-1.0)
    assert flipped.means["spearman"] == pytest.approx(-1.0)
    # 20 candidates: the reversed top 10 is exactly the teacher's bottom 10.
    assert flipped.per_query.filter(pl.col(QID) == "a")["overlap@10"][0] == 0.0

    constant = teacher.with_columns(pl.lit(1.0).alias(SCORE))
    assert math.isnan(teacher_agreement(constant, teacher).means["kendall_tau"])
    with pytest.raises(InputError, match="share no"):
        teacher_agreement(_scores(["z"], [[1.0, 2.0]]), teacher)


def test_agreement_ignores_non_finite_rows():
    teacher = _scores(["a"], [[3.0, 2.0, 1.0, 0.0]])
    student = teacher.with_columns(pl.when(pl.col(DOCID) == "d3").then(-math.inf).otherwise(pl.col(SCORE))
                                   .alias(SCORE))
    result = teacher_agreement(student, teacher)
    assert result.per_query["n"][0] == 3
    assert result.means["pearson"] == pytest.approx(1.0)


def test_ranker_specs(tmp_path, monkeypatch, hand):
    dataset, run = hand
    assert parse_ranker_spec("teacher=runs/cache") == ("teacher", "runs/cache")
    assert parse_ranker_spec("bm25") == ("bm25", "bm25")
    with pytest.raises(InputError, match="nowhere/model"):
        load_ranker("x=nowhere/model")
    with pytest.raises(InputError, match="NAME=SPEC"):
        parse_ranker_spec("=bm25")

    bm25 = load_ranker("bm25")
    assert isinstance(bm25, RunRanker) and bm25.name == "bm25"
    assert bm25.rerank(dataset, run)[SCORE].to_list() == run[SCORE].to_list()

    model = tmp_path / "student"
    model.mkdir()
    (model / "distill.json").write_text(json.dumps({"kind": "lightgbm-student"}))
    monkeypatch.setitem(RANKERS._loaders, "lightgbm-student", lambda path, **kw: FakeRanker())
    assert load_ranker(f"gbm={model}").name == "gbm"
    (model / "distill.json").write_text(json.dumps({"kind": "mystery"}))
    with pytest.raises(InputError, match="unknown ranker kind 'mystery'; known: .*lightgbm-student"):
        load_ranker(str(model))

    cache = TeacherCache.create_or_open(tmp_path / "cache", {"kind": "fake"}, None)
    cache.append(run.select(QID, DOCID, pl.col(SCORE) * 2))
    cached = load_ranker(f"teacher={tmp_path / 'cache'}")
    assert cached.name == "teacher"
    assert cached.rerank(dataset, run).sort(QID, DOCID)[SCORE].to_list() == [4.0, 6.0, 2.0] * 2


def test_plain_sentence_transformer_folder_is_a_bi_encoder(tiny_bi_encoder, tiny):
    from students.bi_encoder import BiEncoderRanker

    dataset, run = tiny
    ranker = load_ranker(f"bi={tiny_bi_encoder}", precompute=False)
    assert isinstance(ranker, BiEncoderRanker) and ranker.name == "bi"
    assert parameter_count(ranker) == sum(p.numel() for p in ranker.model.parameters()) > 0
    assert model_folder(str(tiny_bi_encoder)) == tiny_bi_encoder and model_folder("bm25") is None


def test_evaluate_checks_roles(hand):
    dataset, run = hand
    with pytest.raises(ConfigError, match="baseline 'bm25'"):
        evaluate_rankers(dataset, run, {"other": RunRanker()}, baseline="bm25")
    with pytest.raises(ConfigError, match="correction"):
        evaluate_runs(dataset.qrels, {"bm25": run}, "bm25", correction="sidak")
    with pytest.raises(ConfigError, match="metric"):
        evaluate_runs(dataset.qrels, {"bm25": run}, "bm25", metrics=("nope@3",))


class FakeRanker(BaseRanker):
    """Scores by a hash of the ids; holds a tiny torch layer; ``prepare`` is recorded."""

    name = "fake"

    def __init__(self, layer=None) -> None:
        self.layer = layer
        self.prepared_with = None

    def prepare(self, dataset) -> None:
        self.prepared_with = dataset.name

    def rerank(self, dataset, run):
        scores = [zlib.crc32(f"{q}|{d}".encode()) / 2**32 for q, d in run.select(QID, DOCID).iter_rows()]
        return run.select(QID, DOCID).with_columns(pl.Series(SCORE, scores, dtype=pl.Float64))

    def get_config_dict(self):
        return {"kind": "fake"}


@pytest.fixture(scope="module")
def tiny(tiny_beir):
    dataset = load_beir(tiny_beir, "test")
    return dataset, bm25_run(dataset, 10)


def test_latency_fields(tiny, tmp_path):
    import torch

    dataset, run = tiny
    ranker = FakeRanker(torch.nn.Linear(3, 2))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w.bin").write_bytes(b"x" * 123)
    result = measure_latency(ranker, dataset, run, k=5, n_queries=100, warmup=2, threads=1,
                             model_path=tmp_path / "model")
    assert ranker.prepared_with == dataset.name and result.prepared
    assert result.n_queries == dataset.queries.height  # capped at the queries there are
    assert result.k == 5 and result.threads == 1
    assert result.p50_ms > 0 and result.p99_ms >= result.p50_ms and result.pairs_per_s > 0
    assert result.n_parameters == 3 * 2 + 2 == parameter_count(ranker)
    assert result.size_bytes == 123 == size_on_disk(tmp_path / "model")
    cold = measure_latency(ranker, dataset, run, k=5, n_queries=3, prepare=False)
    assert not cold.prepared and cold.prepare_s == 0.0 and cold.n_queries == 3
    assert parameter_count(RunRanker()) == 0
    from distill.cascade.model import stage

    cascade = stage("run", RunRanker()) % 4 >> stage("fake", ranker)
    assert parameter_count(cascade) == 3 * 2 + 2  # a cascade counts its stages' models


def test_latency_settles_a_reduced_precision_on_many_pairs_before_timing(tiny):
    """Left to the first timed call, the check would see one query's k pairs."""
    dataset, run = tiny
    ranker = FakeRanker()
    calls = []
    ranker.settle_precision = lambda queries, docs, total_pairs=None: calls.append(
        (len(queries), len(docs), total_pairs, ranker.calls))
    ranker.calls = 0
    rerank = ranker.rerank

    def counting(dataset, run):
        ranker.calls += 1
        return rerank(dataset, run)

    ranker.rerank = counting
    measure_latency(ranker, dataset, run, k=5, n_queries=3)
    from distill.rankers.base import SETTLE_PAIRS

    n = min(SETTLE_PAIRS, dataset.queries.height * 5)
    assert calls == [(n, n, dataset.queries.height * 5, 0)] and n > 5


def test_result_round_trips(tiny, tmp_path):
    dataset, run = tiny
    rankers = {"bm25": RunRanker(), "fake": FakeRanker(), "teacher": FakeRanker()}
    result = evaluate_rankers(dataset, run, rankers, baseline="bm25", teacher="teacher")
    assert result.agreement is not None and set(result.agreement["ranker"]) == {"bm25", "fake"}
    assert result.summary.filter(pl.col("ranker") == "fake")["kendall_tau"][0] == pytest.approx(1.0)
    result.save(tmp_path)
    back = EvaluationResult.load(tmp_path)
    assert back.summary.equals(result.summary) and back.significance.equals(result.significance)
    assert result.depth is not None and back.depth.equals(result.depth)
    assert list(back.runs) == ["bm25", "fake", "teacher"]
    assert back.runs["fake"].sort(QID, DOCID).equals(result.runs["fake"].sort(QID, DOCID))
    assert "| ranker" in (tmp_path / "results.md").read_text()


def test_cli_evaluate_then_report(tiny, tiny_beir, tmp_path, capsys):
    dataset, run = tiny
    write_run(run, tmp_path / "bm25.trec")
    noisy = run.with_columns((pl.col(SCORE) + pl.int_range(pl.len()).over(QID) % 3).alias(SCORE))
    write_run(noisy, tmp_path / "student.trec")
    cache = TeacherCache.create_or_open(tmp_path / "cache", {"kind": "fake"}, None)
    cache.append(run.select(QID, DOCID, (-pl.col(SCORE)).cast(pl.Float32)))
    out = tmp_path / "eval"
    code, stdout, err = run_cli(["evaluate", "--data", tiny_beir, "--split", "test",
                                 "--run", tmp_path / "bm25.trec", "--ranker", "bm25=bm25",
                                 "--ranker", f"student={tmp_path / 'student.trec'}",
                                 "--ranker", f"teacher={tmp_path / 'cache'}", "--teacher", "teacher",
                                 "--latency", "--latency-queries", "3", "--depths", "2,4", "--out", out], capsys)
    assert code == 0, err
    for name in ("summary.parquet", "per_query.parquet", "runs.parquet", "agreement.parquet", "latency.json",
                 "configs.json", "report.html", "report.md", "distill.json", "depth.parquet"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "distill.json").read_text())
    assert manifest["kind"] == "evaluation" and manifest["config"]["depths"] == [2, 4]
    longest = run.group_by(QID).len()["len"].max()
    assert sorted(set(pl.read_parquet(out / "depth.parquet")["depth"])) == [2, 4, longest]
    # a run file and a cache whose fingerprint names no model replay stored scores: not timed
    assert set(json.loads((out / "latency.json").read_text())) == {"bm25"}
    assert "student" in stdout

    code, _, err = run_cli(["report", "--eval", out, "--out", tmp_path / "rep"], capsys)
    assert code == 0, err
    assert (tmp_path / "rep" / "report.html").is_file() and (tmp_path / "rep" / "distill.json").is_file()

    code, _, err = run_cli(["evaluate", "--data", tiny_beir, "--run", tmp_path / "bm25.trec",
                            "--ranker", "bm25", "--baseline", "nope", "--out", tmp_path / "bad"], capsys)
    assert code == 2 and "baseline 'nope'" in err and not (tmp_path / "bad").exists()
    code, _, err = run_cli(["evaluate", "--data", tiny_beir, "--run", tmp_path / "bm25.trec",
                            "--ranker", "bm25", "--depths", "10,x", "--out", tmp_path / "bad"], capsys)
    assert code == 2 and "--depths" in err and not (tmp_path / "bad").exists()


def test_rankers_are_prepared_before_they_rerank(tiny):
    from distill.evaluation.runner import rerank_all

    class NeedsPreparing(FakeRanker):
        def rerank(self, dataset, run):
            assert self.prepared_with == dataset.name, "reranked before prepare"
            return super().rerank(dataset, run)

    dataset, run = tiny
    ranker = NeedsPreparing()
    assert rerank_all(dataset, run, {"fake": ranker})["fake"].height == run.height


def test_cli_evaluate_counts_the_stages_a_cascade_skipped(tiny, tiny_beir, tmp_path, capsys):
    from distill.cascade.model import Cascade, StageCost, stage
    from distill.rankers.loading import RunRanker

    dataset, run = tiny
    write_run(run, tmp_path / "bm25.trec")
    write_run(run.with_columns(-pl.col(SCORE)), tmp_path / "slow.trec")
    slow = str(tmp_path / "slow.trec")
    cascade = stage("bm25", RunRanker(), "bm25") % 5 >> stage("slow", RunRanker(read_run(slow)), slow)
    # the slow stage's 5 pairs cost 5e6 ms: never within the 100 ms budget, whatever this machine's speed
    Cascade(cascade.stages, budget_ms=100.0, costs={"bm25": StageCost(), "slow": StageCost(per_pair_ms=1e6)}) \
        .write_spec(tmp_path / "cascade.json")
    out = tmp_path / "eval"
    code, _, err = run_cli(["evaluate", "--data", tiny_beir, "--split", "test", "--run", tmp_path / "bm25.trec",
                            "--ranker", "bm25=bm25", "--ranker", f"c={tmp_path / 'cascade.json'}", "--out", out],
                           capsys)
    assert code == 0, err
    queries = run[QID].n_unique()
    assert json.loads((out / "distill.json").read_text())["cascade_skipped"] == {"c": {"bm25": 0, "slow": queries}}
    assert "skipped stages" in err

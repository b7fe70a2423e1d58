"""Calibrated relevance scores: the fits, their JSON, ECE, and a cascade's relevance offline, in process
and in an evaluation's report."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import polars as pl
import pytest

from distill.cascade.model import Cascade, StageCost
from distill.core.errors import ConfigError, InputError
from distill.core.schema import DOCID, QID, RELEVANCE, SCORE
from distill.evaluation.calibration import (
    ECE,
    PRECISION_AT,
    RELEVANCE_SCORE,
    Calibration,
    PlattCalibration,
    expected_calibration_error,
    fit_calibration,
    reliability_table,
    sigmoid,
    threshold_precision,
)
from distill.rankers.base import BaseRanker
from distill.rankers.loading import RunRanker


def synthetic(n: int = 20_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores, their true probability ``sigmoid(2 s - 1)`` and labels drawn from it."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=n)
    p = sigmoid(2.0 * scores - 1.0)
    return scores, p, rng.random(n) < p


def test_platt_recovers_a_known_probability():
    scores, _, labels = synthetic()
    fitted = fit_calibration(scores, labels)
    assert isinstance(fitted, PlattCalibration)
    assert fitted.slope == pytest.approx(2.0, abs=0.1) and fitted.intercept == pytest.approx(-1.0, abs=0.1)
    assert fitted(np.array([0.5]))[0] == pytest.approx(0.5, abs=0.03)
    assert (fitted.documents, fitted.relevant) == (scores.size, int(labels.sum()))


def test_isotonic_is_monotone_within_0_and_1():
    scores, p, labels = synthetic()
    fitted = fit_calibration(scores, labels, "isotonic")
    grid = np.linspace(-5, 5, 101)
    out = fitted(grid)
    assert np.all(np.diff(out) >= 0) and out.min() >= 0 and out.max() <= 1
    assert expected_calibration_error(fitted(scores), labels) < 0.01  # in sample


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_json_round_trip(method):
    scores, _, labels = synthetic(2000)
    fitted = fit_calibration(scores, labels, method)
    back = Calibration.from_json(json.loads(json.dumps(fitted.to_json())))
    assert back == fitted and type(back) is type(fitted)
    assert np.array_equal(back(scores), fitted(scores))


@pytest.mark.parametrize("body", [
    None, {"method": "magic"}, {"method": "platt", "slope": 1.0, "documents": 1, "relevant": 0},
    {"method": "platt", "slope": "1", "intercept": 0.0, "documents": 1, "relevant": 0},
    {"method": "isotonic", "x": [1.0, 0.0], "y": [0.1, 0.2], "documents": 2, "relevant": 1},
    {"method": "isotonic", "x": [0.0, 1.0], "y": [0.1, 1.2], "documents": 2, "relevant": 1},
])
def test_malformed_calibrations_are_config_errors(body):
    with pytest.raises(ConfigError, match="calibration"):
        Calibration.from_json(body)


def test_bad_fits_are_config_errors():
    with pytest.raises(ConfigError):
        fit_calibration(np.array([]), np.array([]))
    with pytest.raises(ConfigError):
        fit_calibration(np.array([1.0, np.nan]), np.array([1, 0]))
    with pytest.raises(ConfigError):
        fit_calibration(np.array([1.0]), np.array([1]), "magic")


def test_ece_of_perfectly_calibrated_data_is_zero():
    # 100 documents in each bin's middle, exactly that share relevant
    centres = np.arange(10) / 10 + 0.05
    p = np.repeat(centres, 100)
    labels = np.concatenate([np.arange(100) < round(100 * c) for c in centres])
    assert expected_calibration_error(p, labels) == pytest.approx(0.0, abs=1e-12)
    _, drawn, drawn_labels = synthetic(100_000)
    assert expected_calibration_error(drawn, drawn_labels) < 0.01
    # overconfident: 0.9 said, half relevant
    assert expected_calibration_error(np.full(10, 0.9), np.arange(10) < 5) == pytest.approx(0.4)


def test_reliability_bins_are_equal_width_and_the_last_is_closed():
    table = reliability_table(np.array([0.0, 0.1, 0.15, 0.999, 1.0]), np.array([0, 1, 0, 1, 1]))
    assert table["bin"].to_list() == [0, 1, 9]
    assert table["documents"].to_list() == [1, 2, 2]
    assert table["observed"].to_list() == [0.0, 0.5, 1.0]
    assert table["lower"].to_list() == [0.0, 0.1, 0.9] and table["upper"].to_list() == [0.1, 0.2, 1.0]
    assert np.isnan(expected_calibration_error(np.array([]), np.array([])))


def test_threshold_precision_counts_the_documents_at_or_above_the_threshold():
    p = np.array([0.2, 0.5, 0.7, 0.9, 0.49])
    assert threshold_precision(p, np.array([1, 1, 0, 1, 1])) == pytest.approx(2 / 3)  # 0.5 counts, 0.49 does not
    assert threshold_precision(p, np.array([1, 1, 0, 1, 1]), threshold=0.8) == 1.0
    assert np.isnan(threshold_precision(np.array([0.1, 0.3]), np.array([1, 1])))


# -- a cascade's relevance scores --------------------------------------------------------------------


class Oracle(BaseRanker):
    """Scores a pair by its qrels grade plus seeded noise, by query text and docid: the same in
    ``rerank`` and in the runtime's ``score_documents``."""

    def __init__(self, dataset) -> None:
        texts = dict(zip(dataset.queries[QID], dataset.queries["text"]))
        self.grades = {(texts[q], d): g for q, d, g in dataset.qrels.select(QID, DOCID, RELEVANCE).iter_rows()}
        self.name = "oracle"

    def pair(self, query: str, docid: str) -> float:
        noise = np.random.default_rng([*map(ord, query + "|" + docid)]).normal(0.0, 0.8)
        return float(self.grades.get((query, docid), 0)) + noise

    def rerank(self, dataset, run: pl.DataFrame) -> pl.DataFrame:
        queries = dataset.query_texts(run[QID])
        return run.select(QID, DOCID).with_columns(
            pl.Series(SCORE, [self.pair(q, d) for q, d in zip(queries, run[DOCID], strict=True)]))

    def score_documents(self, query: str, docs) -> np.ndarray:
        return np.array([self.pair(query, d) for d in docs.ids])


@pytest.fixture(scope="module")
def built(tiny_beir):
    """A cascade built on the tiny dataset's train split: bm25, then the oracle; its spec names the
    oracle ``p:oracle`` (read back with a loader that knows it)."""
    from distill.cascade.search import CascadeBuildConfig, build_cascade
    from distill.data.beir import load_beir
    from distill.data.bm25 import bm25_run

    dataset = load_beir(tiny_beir, "train")
    run = bm25_run(dataset, k=20)
    oracle = Oracle(dataset)
    build = build_cascade(dataset, run, {"bm25": "bm25", "oracle": oracle}, 1e6,
                          CascadeBuildConfig(cutoffs=(20, 10)),
                          costs={"bm25": StageCost(), "oracle": StageCost(per_pair_ms=0.001)})
    cascade = replace(build.cascade, stages=tuple(replace(s, spec=s.spec or f"p:{s.name}")
                                                 for s in build.cascade.stages))
    return cascade, dataset, run, oracle


def request(dataset, run: pl.DataFrame, qid: str) -> tuple[str, list[dict]]:
    part = run.filter(pl.col(QID) == qid)
    return dataset.query_texts([qid])[0], [{"id": d, "text": t, "score": s} for d, t, s in
                                           zip(part[DOCID], dataset.doc_texts(part[DOCID]), part[SCORE], strict=True)]


def test_a_built_spec_stores_a_calibration_per_stage(built, tmp_path):
    cascade, _, _, oracle = built
    assert [s.name for s in cascade.stages] == ["bm25", "oracle"]
    assert all(s.calibration is not None for s in cascade.stages)
    assert cascade.provenance["calibration"]["bm25"]["on"] == "rank"
    assert cascade.provenance["calibration"]["oracle"]["on"] == "score"
    assert cascade.stages[1].calibration.slope > 0  # the oracle's score says relevance
    assert 0.5 <= cascade.provenance["calibration"]["oracle"][PRECISION_AT] <= 1  # valid's, for evaluate's to match
    cascade.write_spec(tmp_path / "cascade.json")
    body = json.loads((tmp_path / "cascade.json").read_text())
    assert body["format"] == "distill-cascade/2" and set(body["calibration"]) == {"bm25", "oracle"}
    loaded = Cascade.read_spec(tmp_path / "cascade.json",
                               load=lambda spec, name: oracle if spec == "p:oracle" else RunRanker(name=name))
    assert [s.calibration for s in loaded.stages] == [s.calibration for s in cascade.stages]
    body["calibration"]["nope"] = body["calibration"]["bm25"]
    with pytest.raises(ConfigError, match="unknown stage"):
        Cascade.from_spec(body, load=lambda spec, name: oracle)


def test_rank_gives_probabilities_monotone_in_the_stage_score(built):
    cascade, dataset, run, oracle = built
    qid = run[QID][0]
    query, docs = request(dataset, run, qid)
    result = cascade.rank(query, docs)
    relevance = np.array(result.relevance)
    assert len(relevance) == len(result.ids) and np.all((relevance >= 0) & (relevance <= 1))
    kept = result.stages[-1].n_out  # the oracle's documents come first, by its score
    stage_scores = np.array([oracle.pair(query, d) for d in result.ids[:kept]])
    assert np.all(np.diff(stage_scores) <= 0) and np.all(np.diff(relevance[:kept]) <= 0)
    assert relevance[:kept] == pytest.approx(cascade.stages[1].calibration(stage_scores))
    # the offline cascade gives the same relevance scores
    offline = cascade.rerank(dataset, run.filter(pl.col(QID) == qid))
    by_id = dict(zip(offline[DOCID], offline[RELEVANCE_SCORE]))
    assert relevance == pytest.approx([by_id[d] for d in result.ids])


def test_a_degraded_answer_reads_the_first_stage_calibration(built):
    cascade, dataset, run, _ = built
    query, docs = request(dataset, run, run[QID][0])
    late = cascade.rank(query, docs, deadline_ms=1.0, started=0.0)
    assert [s.ran for s in late.stages] == [True, False]
    ranks = np.arange(1, len(late.ids) + 1)
    assert late.relevance == pytest.approx(cascade.stages[0].calibration(-np.log(ranks)))


def test_min_score_drops_the_documents_below_it(built):
    cascade, dataset, run, _ = built
    query, docs = request(dataset, run, run[QID][0])
    full = cascade.rank(query, docs)
    threshold = float(np.median(full.relevance))
    kept = cascade.rank(query, docs, min_score=threshold)
    expected = [(d, s, r) for d, s, r in zip(full.ids, full.scores, full.relevance, strict=True) if r >= threshold]
    assert list(zip(kept.ids, kept.scores, kept.relevance, strict=True)) == expected
    assert 0 < len(kept.ids) < len(full.ids)
    assert cascade.rank(query, docs, min_score=threshold, top_k=2).ids == kept.ids[:2]
    assert cascade.rank(query, docs, min_score=1.0).ids == [d for d, r in zip(full.ids, full.relevance) if r >= 1.0]
    for bad in (-0.1, 1.5, "high", True):
        with pytest.raises(InputError, match="min_score"):
            cascade.rank(query, docs, min_score=bad)


def test_a_version_1_spec_answers_by_the_sigmoid_rule(built, tmp_path):
    _, dataset, run, oracle = built
    spec = tmp_path / "old.json"
    spec.write_text(json.dumps({"format": "distill-cascade/1", "stages": [
        {"name": "bm25", "ranker": "bm25", "cutoff": 5}, {"name": "oracle", "ranker": "p:oracle", "cutoff": None}]}))
    cascade = Cascade.read_spec(spec, load=lambda s, name: oracle if s == "p:oracle" else RunRanker(name=name))
    assert not cascade.calibrated
    query, docs = request(dataset, run, run[QID][0])
    result = cascade.rank(query, docs)
    stage_scores = np.array([oracle.pair(query, d) for d in result.ids[:5]])
    assert result.relevance[:5] == pytest.approx(sigmoid(stage_scores))
    # cut by the replayed first stage: 1 / (1 + its rank), the sigmoid of -log(rank)
    assert result.relevance[5:] == pytest.approx(1.0 / (1.0 + np.arange(6, len(docs) + 1)))
    assert RELEVANCE_SCORE not in cascade.rerank(dataset, run).columns  # offline: only with a calibration


def test_evaluate_reports_the_ece_of_a_calibrated_cascade(built, tmp_path):
    from distill.evaluation.report import write_report
    from distill.evaluation.runner import EvaluationResult, evaluate_rankers

    cascade, dataset, run, _ = built
    result = evaluate_rankers(dataset, run, {"bm25": RunRanker(), "cascade": cascade}, baseline="bm25")
    ece = dict(zip(result.summary["ranker"], result.summary[ECE]))
    assert ece["bm25"] is None and 0 <= ece["cascade"] < 0.5
    precision = dict(zip(result.summary["ranker"], result.summary[PRECISION_AT]))
    assert precision["bm25"] is None and 0.5 <= precision["cascade"] <= 1
    assert set(result.calibration["ranker"]) == {"cascade"}
    assert result.calibration["documents"].sum() == run.join(dataset.qrels.select(QID).unique(), on=QID,
                                                             how="semi").group_by(QID).len()["len"].clip(
        upper_bound=10).sum()
    result.save(tmp_path)
    assert EvaluationResult.load(tmp_path).calibration.equals(result.calibration)
    html, md = write_report(tmp_path, result)
    assert "## Calibration" in md.read_text() and ECE in md.read_text()
    assert "reliability of its relevance scores" in html.read_text()

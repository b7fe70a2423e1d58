"""Cascades (operators, final ranking, budget), their spec, the fast metric and the search; the command line is
tested in tests/test_cascade_cli.py.

Rankers here are fakes returning planted scores, so every expected ranking is known.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import polars as pl
import pytest

from distill.cascade.model import Cascade, CascadeStats, StageCost, stage
from distill.cascade.search import CascadeConfig, quick_evaluate, replay, search_cascades
from distill.core.errors import ConfigError, InputError
from distill.core.schema import CORPUS_SCHEMA, DOCID, QID, QUERIES_SCHEMA, RELEVANCE, SCORE
from distill.data.beir import Dataset
from distill.data.runs import write_run
from distill.evaluation.metrics import metric_means
from distill.rankers.base import BaseRanker


class Planted(BaseRanker):
    """A ranker returning fixed scores and recording the candidates it was asked about."""

    def __init__(self, name: str, scores: dict[tuple[str, str], float]) -> None:
        self.name = name
        self.table = pl.DataFrame(
            [(q, d, float(s)) for (q, d), s in scores.items()], schema=[QID, DOCID, SCORE], orient="row"
        )
        self.calls: list[set[tuple[str, str]]] = []

    def rerank(self, dataset, run: pl.DataFrame) -> pl.DataFrame:
        self.calls.append(set(run.select(QID, DOCID).iter_rows()))
        return run.select(QID, DOCID).join(self.table, on=[QID, DOCID], how="left")

    def get_config_dict(self) -> dict:
        return {"planted": self.name}

    @property
    def scored(self) -> set[tuple[str, str]]:
        return set().union(*self.calls)


def dataset_of(qrels: pl.DataFrame) -> Dataset:
    queries = pl.DataFrame({QID: qrels[QID].unique().sort(), "text": "q"}, schema=QUERIES_SCHEMA)
    return Dataset(corpus=pl.DataFrame(schema=CORPUS_SCHEMA), queries=queries, qrels=qrels)


def ranking(run: pl.DataFrame, qid: str) -> list[str]:
    return run.filter(pl.col(QID) == qid).sort(SCORE, descending=True)[DOCID].to_list()


# -- a hand example -----------------------------------------------------------------------------

HAND = {  # q1: 6 candidates; q2: 3 (fewer than the first cutoff)
    "first": {("q1", "d1"): 6, ("q1", "d2"): 5, ("q1", "d3"): 4, ("q1", "d4"): 3, ("q1", "d5"): 2, ("q1", "d6"): 1,
              ("q2", "e1"): 3, ("q2", "e2"): 2, ("q2", "e3"): 1},
    "a": {("q1", "d1"): 1, ("q1", "d2"): 4, ("q1", "d3"): 3, ("q1", "d4"): 2, ("q1", "d5"): 99, ("q1", "d6"): 99,
          ("q2", "e1"): 1, ("q2", "e2"): 3, ("q2", "e3"): 2},
    "b": {("q1", "d1"): 9, ("q1", "d2"): 1, ("q1", "d3"): 2, ("q1", "d4"): 9, ("q1", "d5"): 9, ("q1", "d6"): 9,
          ("q2", "e1"): 9, ("q2", "e2"): 1, ("q2", "e3"): 2},
}


def hand_cascade() -> tuple[Cascade, dict[str, Planted]]:
    rankers = {name: Planted(name, scores) for name, scores in HAND.items()}
    cascade = (stage("first", rankers["first"], "p:first") % 4 >> stage("a", rankers["a"], "p:a") % 2
               >> stage("b", rankers["b"], "p:b"))
    return cascade, rankers


def hand_run() -> pl.DataFrame:
    return Planted("first", HAND["first"]).table


def test_cascade_prints_itself():
    r = Planted("x", {})
    cascade = stage("bm25", r) % 1000 >> stage("lightgbm", r) % 100 >> stage("ce", r) % 20 >> stage("teacher", r)
    assert str(cascade) == "bm25 % 1000 >> lightgbm % 100 >> ce % 20 >> teacher"
    assert cascade.name == str(cascade)
    assert str((stage("a", r) % 50) % 100) == "a % 50"  # cutting twice keeps the smaller
    assert str((stage("a", r) >> stage("b", r)) % 10) == "a >> b % 10"
    assert str(stage("a", r) >> (stage("b", r) % 5 >> stage("c", r))) == "a >> b % 5 >> c"
    assert [s.cutoff for s in cascade.stages] == [1000, 100, 20, None]


def test_operators_reject_bad_input():
    r = Planted("x", {})
    with pytest.raises(ConfigError):
        stage("a", r) % 0
    with pytest.raises(ConfigError):
        stage("a b", r)
    with pytest.raises(ConfigError, match="unique"):
        stage("a", r) >> stage("a", r)
    with pytest.raises(TypeError):
        stage("a", r) >> 3
    with pytest.raises(ConfigError, match="missing"):
        Cascade((stage("a", r), stage("b", r)), budget_ms=10, costs={"a": StageCost()})


@pytest.mark.parametrize("per_query", [False, True])
def test_cut_and_chain_on_a_hand_example(per_query):
    cascade, rankers = hand_cascade()
    run = cascade.rerank(None, hand_run(), per_query=per_query)
    # q1: first keeps d1..d4 (cuts d5, d6); a keeps d2, d3 (cuts d4, d1 in its order); b orders d3, d2
    assert ranking(run, "q1") == ["d3", "d2", "d4", "d1", "d5", "d6"]
    # q2: 3 candidates survive the first cut; a keeps e2, e3 and cuts e1; b orders e3, e2
    assert ranking(run, "q2") == ["e3", "e2", "e1"]
    assert rankers["a"].scored == {("q1", "d1"), ("q1", "d2"), ("q1", "d3"), ("q1", "d4"),
                                   ("q2", "e1"), ("q2", "e2"), ("q2", "e3")}
    assert rankers["b"].scored == {("q1", "d2"), ("q1", "d3"), ("q2", "e2"), ("q2", "e3")}
    assert len(rankers["b"].calls) == (2 if per_query else 1)
    assert run.height == 9 and run[SCORE].dtype == pl.Float64
    assert cascade.rerank(None, hand_run().clear(), per_query=per_query).columns == [QID, DOCID, SCORE]


def test_a_ranker_that_drops_candidates_is_an_error():
    scores = dict(HAND["a"])
    del scores[("q1", "d2")]
    cascade = stage("first", Planted("first", HAND["first"])) % 4 >> stage("a", Planted("a", scores))
    with pytest.raises(InputError, match="'a'"):
        cascade.rerank(None, hand_run())


def test_graceful_degradation_under_a_budget():
    cascade, rankers = hand_cascade()
    costs = {"first": StageCost(), "a": StageCost(per_pair_ms=1.0), "b": StageCost(per_pair_ms=1e6)}
    # b (2 pairs at 1e6 ms) never fits 10 s; a (4 pairs at 1 ms) always does
    budgeted = replace(cascade, budget_ms=10_000.0, costs=costs)
    run = budgeted.rerank(None, hand_run())
    assert budgeted.stats.skipped == {"first": 0, "a": 0, "b": 2}
    assert rankers["b"].calls == []
    assert ranking(run, "q1") == ["d2", "d3", "d4", "d1", "d5", "d6"]  # a's order, then first's cut
    assert ranking(run, "q2") == ["e2", "e3", "e1"]
    assert len(budgeted.stats.latency_ms) == 2
    # a tiny budget: only the first stage runs, and every query still gets its full ranking
    tiny = replace(cascade, budget_ms=1e-9, costs=costs)
    run = tiny.rerank(None, hand_run())
    assert tiny.stats.skipped == {"first": 0, "a": 2, "b": 2}
    assert ranking(run, "q1") == ["d1", "d2", "d3", "d4", "d5", "d6"]
    assert ranking(run, "q2") == ["e1", "e2", "e3"]
    summary = tiny.stats.summary()
    assert summary["queries"] == 2 and summary["p50_ms"] is not None
    assert CascadeStats().summary()["p50_ms"] is None


def test_first_stage_cost_counts_against_the_budget():
    cascade, _ = hand_cascade()
    costs = {"first": StageCost(per_query_ms=100.0), "a": StageCost(per_query_ms=1.0), "b": StageCost()}
    budgeted = replace(cascade, budget_ms=100.5, costs=costs)
    budgeted.rerank(None, hand_run())
    assert budgeted.stats.skipped == {"first": 0, "a": 2, "b": 2}


def test_spec_round_trip_gives_the_same_rankings(tmp_path):
    cascade, rankers = hand_cascade()
    cascade = replace(cascade, budget_ms=1e9, provenance={"nDCG@10": 0.5},
                      costs={"first": StageCost(1.0, 0.0), "a": StageCost(0.0, 0.5), "b": StageCost(2.0, 1.0)})
    path = tmp_path / "cascade.json"
    cascade.write_spec(path)
    loaded = Cascade.read_spec(path, load=lambda spec, name: rankers[spec.removeprefix("p:")])
    assert str(loaded) == str(cascade)
    assert loaded.to_spec() == cascade.to_spec() == json.loads(path.read_text())
    assert loaded.rerank(None, hand_run()).equals(cascade.rerank(None, hand_run()))


def test_spec_round_trip_through_load_ranker(tmp_path):
    """Specs are what distill.rankers.loading.load_ranker accepts: 'bm25' and TREC run files here."""
    specs = {}
    for name in ("a", "b"):
        specs[name] = str(tmp_path / f"{name}.trec")
        write_run(Planted(name, HAND[name]).table, specs[name], tag=name)
    run = hand_run()
    from distill.rankers.loading import load_ranker

    cascade = (stage("bm25", load_ranker("bm25", name="bm25"), "bm25") % 4
               >> stage("a", load_ranker(specs["a"], name="a"), specs["a"]) % 2
               >> stage("b", load_ranker(specs["b"], name="b"), specs["b"]))
    cascade.write_spec(tmp_path / "c.json")
    loaded = Cascade.read_spec(tmp_path / "c.json")
    assert loaded.rerank(None, run).equals(cascade.rerank(None, run))
    assert ranking(loaded.rerank(None, run), "q1") == ["d3", "d2", "d4", "d1", "d5", "d6"]


def test_bad_specs_are_located(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("{not json")
    with pytest.raises(InputError, match="c.json"):
        Cascade.read_spec(path)
    cascade, rankers = hand_cascade()
    spec = cascade.to_spec()
    spec["stages"][1]["cutoff"] = -3
    with pytest.raises(ConfigError, match=r"stages\[1\]"):
        Cascade.from_spec(spec, load=lambda s, name: rankers[s.removeprefix("p:")])
    with pytest.raises(ConfigError, match="format"):
        Cascade.from_spec({"stages": []})
    with pytest.raises(ConfigError, match="no ranker spec"):
        (stage("x", rankers["a"]) >> stage("y", rankers["b"])).to_spec()


def test_cost_fit():
    cost = StageCost.fit([(10.0, 3.0), (100.0, 12.0)])
    assert cost.per_pair_ms == pytest.approx(0.1) and cost.per_query_ms == pytest.approx(2.0)
    assert StageCost.fit([(10.0, 5.0), (100.0, 4.0)]).per_pair_ms == 0.0  # noise never makes pairs free-er
    assert cost.expected_ms(20) == pytest.approx(4.0)
    with pytest.raises(ConfigError):
        StageCost(per_pair_ms=-1.0)


# -- the fast metric ----------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("metric", ["nDCG@10", "RR@10", "nDCG@3"])
def test_quick_metric_equals_ir_measures(seed, metric):
    rng = np.random.default_rng(seed)
    rows, qrels = [], []
    for q in range(25):
        docs = [f"d{j}" for j in rng.choice(60, size=rng.integers(1, 40), replace=False)]
        rows += [(f"q{q}", d, float(rng.normal())) for d in docs]
        judged = rng.choice(60, size=rng.integers(1, 12), replace=False)
        qrels += [(f"q{q}", f"d{j}", int(rng.integers(0, 4))) for j in judged]
    qrels += [("q_unranked", "d1", 2)]  # judged, no candidates: counts as zero
    run = pl.DataFrame(rows, schema=[QID, DOCID, SCORE], orient="row")
    qrels = pl.DataFrame(qrels, schema={QID: pl.String, DOCID: pl.String, RELEVANCE: pl.Int32}, orient="row")
    expected = metric_means(qrels, run, [metric])[metric]
    assert quick_evaluate(qrels, run, metric) == pytest.approx(expected, abs=1e-9)


def test_unsupported_search_metric():
    run = pl.DataFrame({QID: ["q"], DOCID: ["d"], SCORE: [1.0]})
    qrels = pl.DataFrame({QID: ["q"], DOCID: ["d"], RELEVANCE: [1]})
    with pytest.raises(ConfigError, match="nDCG@k"):
        quick_evaluate(qrels, run, "AP")


# -- the search ---------------------------------------------------------------------------------

N_DOCS, N_QUERIES = 200, 30
COSTS = {"bm25": StageCost(per_query_ms=1.0), "lgbm": StageCost(per_pair_ms=0.001),
         "ce": StageCost(per_pair_ms=0.05), "teacher": StageCost(per_pair_ms=1.0)}


@pytest.fixture(scope="module")
def synthetic():
    """Per query: 3 relevant docs (grades 2, 1, 1), 10 hard negatives, 187 others.

    bm25 ranks the hard negatives 1-10 and the relevant 51-100 (a cut below 100 loses them);
    lgbm ranks hard negatives 1-10, relevant 11-13; ce ranks the relevant 1-3 but the grade-2
    one last; the teacher is perfect. Costs make the teacher affordable for 10 pairs only."""
    rng = np.random.default_rng(0)
    scores = {name: [] for name in COSTS}
    qrels = []
    for q in range(N_QUERIES):
        qid = f"q{q:02d}"
        docs = [f"d{j:03d}" for j in rng.permutation(N_DOCS)]
        relevant, hard, rest = docs[:3], docs[3:13], docs[13:]
        grades = dict(zip(relevant, (2, 1, 1)))
        qrels += [(qid, d, g) for d, g in grades.items()]

        def ranked(order: list[str], qid: str = qid) -> list[tuple[str, str, float]]:
            return [(qid, d, float(N_DOCS - i)) for i, d in enumerate(order)]

        bm25 = hard + list(rng.permutation(rest))
        for d, slot in zip(relevant, sorted(rng.choice(np.arange(50, 100), size=3, replace=False))):
            bm25.insert(int(slot), d)
        scores["bm25"] += ranked(bm25)
        scores["lgbm"] += ranked(hard + list(rng.permutation(relevant)) + list(rng.permutation(rest)))
        scores["ce"] += ranked([relevant[1], relevant[2], relevant[0]] + hard + list(rng.permutation(rest)))
        scores["teacher"] += [(qid, d, grades.get(d, 0) * 10 + float(rng.random())) for d in docs]
    frames = {name: pl.DataFrame(rows, schema=[QID, DOCID, SCORE], orient="row") for name, rows in scores.items()}
    qrels = pl.DataFrame(qrels, schema={QID: pl.String, DOCID: pl.String, RELEVANCE: pl.Int32}, orient="row")
    return frames, qrels


def test_search_picks_the_known_best(synthetic):
    frames, qrels = synthetic
    result = search_cascades(frames, COSTS, qrels, "bm25", budget_ms=13.0)
    assert str(result.chosen) == "bm25 % 100 >> lgbm % 20 >> ce % 10 >> teacher"
    assert result.chosen.value == pytest.approx(1.0)
    assert result.chosen.latency_ms == pytest.approx(1.0 + 100 * 0.001 + 20 * 0.05 + 10 * 1.0)
    # every order of the 3 other stages; cutoffs non-increasing from {200 (= all), 100, 50, 20, 10}
    assert result.n_evaluated == 1 + 3 * 5 + 6 * 15 + 6 * 35
    # with room for 20 teacher pairs the teacher can follow lgbm directly, but the 4-stage cascade is cheaper
    assert str(search_cascades(frames, COSTS, qrels, "bm25", budget_ms=25.0).chosen) == str(result.chosen)


def test_search_without_room_for_the_teacher(synthetic):
    frames, qrels = synthetic
    result = search_cascades(frames, COSTS, qrels, "bm25", budget_ms=9.0)
    assert "teacher" not in result.chosen.stages
    assert result.chosen.latency_ms <= 9.0
    fits = result.frontier.filter(pl.col("within_budget"))
    assert result.chosen.value == fits["nDCG@10"].max()
    with pytest.raises(ConfigError, match="budget"):
        search_cascades(frames, COSTS, qrels, "bm25", budget_ms=0.5)  # bm25 alone takes 1 ms


def test_pareto_frontier_is_non_dominated(synthetic):
    frames, qrels = synthetic
    result = search_cascades(frames, COSTS, qrels, "bm25", budget_ms=13.0)
    points = list(zip(result.frontier["nDCG@10"], result.frontier["latency_ms"]))
    assert len(points) >= 3
    for i, (v, t) in enumerate(points):
        for j, (v2, t2) in enumerate(points):
            if i != j:
                assert not (v2 >= v and t2 <= t), (result.frontier[i], result.frontier[j])
    assert str(result.chosen) in result.frontier["cascade"].to_list()
    assert result.frontier["cascade"][0] == "bm25"  # the cheapest cascade is always on the frontier


def test_simulated_metric_matches_the_real_cascade(synthetic):
    """The search's numpy simulation and Cascade.rerank + ir-measures agree on every frontier point."""
    frames, qrels = synthetic
    result = search_cascades(frames, COSTS, qrels, "bm25", budget_ms=13.0)
    dataset = dataset_of(qrels)
    for row in result.frontier.iter_rows(named=True):
        config = CascadeConfig(tuple(row["stages"]), tuple(row["cutoffs"]), row["nDCG@10"], row["latency_ms"])
        run = replay(config, frames, dataset)
        assert run.height == frames["bm25"].height
        assert metric_means(qrels, run, ["nDCG@10"])["nDCG@10"] == pytest.approx(config.value, abs=1e-9), str(config)


def test_search_input_errors(synthetic):
    frames, qrels = synthetic
    partial = {**frames, "ce": frames["ce"].head(100)}
    with pytest.raises(InputError, match="'ce'"):
        search_cascades(partial, COSTS, qrels, "bm25", budget_ms=13.0)
    with pytest.raises(ConfigError, match="cost"):
        search_cascades(frames, {"bm25": COSTS["bm25"]}, qrels, "bm25", budget_ms=13.0)
    with pytest.raises(ConfigError, match="first stage"):
        search_cascades(frames, COSTS, qrels, "nope", budget_ms=13.0)

"""Teacher grades and the LightGBM student: it learns a planted teacher, saves safely, reranks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import tiny
from scipy.stats import kendalltau

from distill.core.errors import ConfigError, InputError
from distill.data.beir import Dataset, load_beir
from distill.data.bm25 import bm25_run
from distill.rankers.base import Ranker
from students.features import FeatureConfig, FeatureExtractor
from students.grades import mix_qrels, teacher_grades
from students.lightgbm import OBJECTIVES, LightGBMConfig, LightGBMRanker, train_lightgbm_student

FAST = {"min_data_in_leaf": 5, "num_leaves": 8, "learning_rate": 0.1, "valid_fraction": 0.25}


# --- grades -------------------------------------------------------------------------------

def test_quantile_grades_by_hand():
    run = pl.DataFrame({"qid": ["a"] * 5 + ["b"] * 3, "score": [5.0, 1.0, 3.0, 3.0, -2.0, 0.1, 0.1, 0.0]})
    # a: ranks 1, 4, 2, 2, 5 of 5 -> bins of one; b: ties share the top grade
    assert teacher_grades(run).to_list() == [4, 1, 3, 3, 0, 4, 4, 1]
    assert teacher_grades(run, n_grades=2).to_list() == [1, 0, 1, 1, 0, 1, 1, 0]


def test_grades_ignore_the_scale_of_logits():
    run = pl.DataFrame({"qid": ["a"] * 4, "score": [0.3, -1.0, 2.0, 0.0]})
    scaled = run.with_columns(pl.col("score") * 100 - 7)
    for method in ("quantile", "linear"):
        assert teacher_grades(run, 4, method).to_list() == teacher_grades(scaled, 4, method).to_list()
    assert teacher_grades(run, 4).to_list() == [2, 0, 3, 1]


def test_linear_grades_by_hand():
    run = pl.DataFrame({"qid": ["a"] * 4 + ["b"], "score": [0.0, 1.0, 5.0, 10.0, 3.0]})
    # bins of width 10/3 between 0 and 10; a single-document list gets the top grade
    assert teacher_grades(run, 3, "linear").to_list() == [0, 0, 1, 2, 2]


def test_log_rank_grades_by_hand():
    run = pl.DataFrame({"qid": ["a"] * 9 + ["b"] * 4, "score": [9.0, 8, 7, 6, 5, 4, 3, 2, 1, 9, 9, 7, 6]})
    # rank 1 | 2-3 | 4-7 | 8+ ; in b the tied pair shares rank 1
    assert teacher_grades(run, 4, "log_rank").to_list() == [3, 2, 2, 1, 1, 1, 1, 0, 0, 3, 3, 2, 1]


def test_qrels_mix_by_hand():
    run = pl.DataFrame({"qid": ["a", "a", "a", "b", "b"], "docid": ["d1", "d2", "d3", "e1", "e2"]})
    grades = np.array([4, 0, 2, 3, 1])
    qrels = pl.DataFrame({"qid": ["a", "a", "c"], "docid": ["d2", "d3", "x"], "relevance": [2, 1, 1]})
    # a: judged d2 -> top grade 4, d3 (relevance 1 of 2) -> 2, d1 unjudged -> 0; b has no qrels
    assert mix_qrels(run, grades, qrels, 5, 1.0).tolist() == [0, 4, 2, 3, 1]
    assert mix_qrels(run, grades, qrels, 5, 0.5).tolist() == [2, 2, 2, 3, 1]
    assert mix_qrels(run, grades, qrels, 5, 0.0).tolist() == grades.tolist()
    with pytest.raises(ConfigError, match="qrels weight"):
        mix_qrels(run, grades, qrels, 5, 1.5)


def test_grades_reject_unknown_method():
    with pytest.raises(ConfigError, match="linear"):
        teacher_grades(pl.DataFrame({"qid": ["a"], "score": [1.0]}), method="bins")


# --- the student --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def splits(tiny_beir: Path) -> tuple[Dataset, Dataset]:
    return load_beir(tiny_beir, "train"), load_beir(tiny_beir, "test")


@pytest.fixture(scope="module")
def runs(splits) -> tuple[pl.DataFrame, pl.DataFrame]:
    return bm25_run(splits[0], 20), bm25_run(splits[1], 20)


@pytest.fixture(scope="module")
def lexical(splits) -> FeatureExtractor:
    return FeatureExtractor(FeatureConfig(first_stage=False)).fit(splits[0])


def planted_teacher(lexical: FeatureExtractor, dataset: Dataset, run: pl.DataFrame, seed: int) -> pl.DataFrame:
    """Teacher logits: a nonlinear function of two features plus a little noise."""
    x = lexical.transform(dataset, run)
    bm25 = x[:, lexical.feature_names.index("bm25_body")]
    cosine = x[:, lexical.feature_names.index("tfidf_cosine")]
    score = np.sin(3 * bm25) - 4 * (cosine - 0.35) ** 2 + np.random.default_rng(seed).normal(0, 0.01, len(bm25))
    return run.select("qid", "docid").with_columns(pl.Series("score", score, dtype=pl.Float32))


def mean_tau(run: pl.DataFrame, predicted: np.ndarray, teacher: np.ndarray) -> float:
    frame = run.select("qid").with_columns(pl.Series("p", predicted), pl.Series("t", teacher))
    return float(np.mean([np.nan_to_num(kendalltau(g["p"], g["t"]).statistic) for g in frame.partition_by("qid")]))


@pytest.fixture(scope="module")
def teacher(lexical, splits, runs) -> tuple[pl.DataFrame, pl.DataFrame]:
    return planted_teacher(lexical, splits[0], runs[0], 0), planted_teacher(lexical, splits[1], runs[1], 1)


def test_learns_a_planted_teacher_on_held_out_queries(splits, runs, lexical, teacher, tmp_path):
    (train, test), (train_run, test_run), (train_scores, test_scores) = splits, runs, teacher
    config = LightGBMConfig(n_estimators=200, early_stopping_rounds=30, **FAST)
    folder = train_lightgbm_student(train, train_run.select("qid", "docid"), train_scores, tmp_path / "m", config)
    ranker = LightGBMRanker(folder)
    reranked = ranker.rerank(test, test_run).join(test_scores, on=["qid", "docid"], suffix="_teacher")
    student_tau = mean_tau(reranked, reranked["score"].to_numpy(), reranked["score_teacher"].to_numpy())
    x = lexical.transform(test, test_run)
    truth = test_scores["score"].to_numpy()
    best_single = max(abs(mean_tau(test_run, x[:, i], truth)) for i in range(x.shape[1]))
    assert student_tau > best_single + 0.1, (student_tau, best_single)
    importance = ranker.feature_importance()
    assert max(importance, key=importance.get) in {"bm25_body", "tfidf_cosine", "bm25_doc"}


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_each_objective_trains_saves_and_reranks(objective, splits, runs, teacher, tmp_path):
    (train, test), (train_run, test_run) = splits, runs
    config = LightGBMConfig(objective=objective, n_estimators=5, **FAST)
    fingerprint = {"model": "tiny-teacher", "max_length": 64}
    folder = train_lightgbm_student(train, train_run, teacher[0], tmp_path / objective, config,
                                    teacher_fingerprint=fingerprint)
    manifest = json.loads((folder / "distill.json").read_text())
    assert manifest["kind"] == "lightgbm-student" and manifest["config"]["objective"] == objective
    assert manifest["teacher"] == fingerprint and 1 <= manifest["best_iteration"] <= 5
    assert "first_stage_score" in manifest["feature_names"]  # the BM25 run carries scores
    assert manifest["validation"]["queries"] == 4 and -1 <= manifest["validation"]["kendall_tau"] <= 1
    assert {p.name for p in folder.iterdir()} >= {"model.txt", "features.json", "distill.json"}
    for path in folder.iterdir():
        assert path.suffix not in {".pkl", ".pickle", ".joblib"} and not path.read_bytes().startswith(b"\x80")
    ranker = LightGBMRanker(folder)
    assert isinstance(ranker, Ranker)
    out = ranker.rerank(test, test_run)
    assert out.height == test_run.height and out["score"].is_finite().all()
    assert sorted(out.select("qid", "docid").rows()) == sorted(test_run.select("qid", "docid").rows())
    assert ranker.get_config_dict()["config"]["objective"] == objective
    with pytest.raises(InputError, match="score"):
        ranker.rerank(test, test_run.select("qid", "docid"))  # trained with first-stage scores


def test_training_is_deterministic(splits, runs, teacher, tmp_path):
    config = LightGBMConfig(n_estimators=10, **FAST)
    a = train_lightgbm_student(splits[0], runs[0], teacher[0], tmp_path / "a", config)
    b = train_lightgbm_student(splits[0], runs[0], teacher[0], tmp_path / "b", config)
    first = LightGBMRanker(a).rerank(splits[1], runs[1])["score"].to_numpy()
    np.testing.assert_array_equal(first, LightGBMRanker(b).rerank(splits[1], runs[1])["score"].to_numpy())


def test_row_order_of_the_candidates_does_not_change_the_model(splits, runs, teacher, tmp_path):
    """Candidates in teacher order (as an imported run arrives) train the same trees as in BM25 order:
    before, early stopping kept one round for them, tied predictions ranking in teacher order."""
    config = LightGBMConfig(n_estimators=30, early_stopping_rounds=5, **FAST)
    a = train_lightgbm_student(splits[0], runs[0], teacher[0], tmp_path / "a", config)
    by_teacher = runs[0].join(teacher[0], on=["qid", "docid"]).sort(["qid", "score_right"], descending=[True, True])
    b = train_lightgbm_student(splits[0], by_teacher.drop("score_right"), teacher[0].sample(fraction=1.0, shuffle=True,
                               seed=3), tmp_path / "b", config)
    manifest = [json.loads((folder / "distill.json").read_text()) for folder in (a, b)]
    assert manifest[0]["best_iteration"] == manifest[1]["best_iteration"] > 1
    first = LightGBMRanker(a).rerank(splits[1], runs[1])["score"].to_numpy()
    np.testing.assert_allclose(first, LightGBMRanker(b).rerank(splits[1], runs[1])["score"].to_numpy(), atol=1e-9)


def test_missing_teacher_scores_are_an_error_naming_the_cache(splits, runs, teacher, tmp_path):
    half = teacher[0].head(teacher[0].height // 2)
    with pytest.raises(InputError, match="have no teacher score") as err:
        train_lightgbm_student(splits[0], runs[0], half, tmp_path / "m", LightGBMConfig(**FAST),
                               scores_source=tmp_path / "cache")
    assert str(tmp_path / "cache") in str(err.value)
    assert not (tmp_path / "m").exists()
    few_missing = teacher[0].slice(3)  # drop 3 scores: allowed at 5%, and recorded
    config = LightGBMConfig(n_estimators=2, max_missing_fraction=0.05, **FAST)
    folder = train_lightgbm_student(splits[0], runs[0], few_missing, tmp_path / "m", config)
    assert json.loads((folder / "distill.json").read_text())["training"]["candidates_dropped"] == 3


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_teacher_scores_are_refused(bad, splits, runs, teacher, tmp_path):
    scores = teacher[0].with_columns(
        pl.when(pl.int_range(pl.len()) == 7).then(bad).otherwise(pl.col("score")).cast(pl.Float32).alias("score"))
    with pytest.raises(InputError, match="not finite"):
        train_lightgbm_student(splits[0], runs[0], scores, tmp_path / "m", LightGBMConfig(**FAST))


def test_config_errors(splits, runs, teacher, tmp_path):
    for bad in ({"objective": "lambdamart"}, {"n_grades": 40}, {"valid_fraction": 1.0}, {"grading": "bins"}):
        with pytest.raises(ConfigError):
            train_lightgbm_student(splits[0], runs[0], teacher[0], tmp_path / "m", LightGBMConfig(**{**FAST, **bad}))


def test_other_corpus_gets_its_own_statistics(splits, runs, teacher, tmp_path):
    folder = train_lightgbm_student(splits[0], runs[0].select("qid", "docid"), teacher[0], tmp_path / "m",
                                    LightGBMConfig(n_estimators=3, **FAST))
    ranker = LightGBMRanker(folder)
    ranker.prepare(splits[1])  # same corpus, other queries: the saved statistics
    assert ranker._extractor is ranker._saved
    other = load_beir(tiny.build_beir(tmp_path / "other", seed=1), "test")
    out = ranker.rerank(other, bm25_run(other, 5))
    assert ranker._extractor is not ranker._saved and out["score"].is_finite().all()


def test_not_a_lightgbm_folder(tmp_path):
    (tmp_path / "distill.json").write_text(json.dumps({"kind": "bi-encoder-student"}))
    with pytest.raises(InputError, match="lightgbm-student"):
        LightGBMRanker(tmp_path)


def test_another_rankers_scores_are_features(splits, runs, teacher, tmp_path, monkeypatch):
    """A run file holding the teacher's own scores is the one feature the student should need."""
    from distill.data.runs import write_run

    (train, test), (train_run, test_run), (train_scores, test_scores) = splits, runs, teacher
    write_run(pl.concat([train_scores, test_scores]), tmp_path / "oracle.trec")
    monkeypatch.chdir(tmp_path)  # a relative spec is saved as an absolute path
    config = LightGBMConfig(n_estimators=100, feature_rankers={"oracle": "oracle.trec"}, **FAST)
    folder = train_lightgbm_student(train, train_run, train_scores, tmp_path / "stacked", config)
    plain = train_lightgbm_student(train, train_run, train_scores, tmp_path / "plain",
                                   LightGBMConfig(n_estimators=100, **FAST))
    manifest = json.loads((folder / "distill.json").read_text())
    assert manifest["config"]["feature_rankers"] == {"oracle": str(tmp_path / "oracle.trec")}
    assert manifest["feature_names"][-1] == "ranker_oracle"
    monkeypatch.chdir(Path(__file__).parent)
    taus = {}
    for name, model in (("stacked", folder), ("plain", plain)):
        ranker = LightGBMRanker(model)
        reranked = ranker.rerank(test, test_run).join(test_scores, on=["qid", "docid"], suffix="_teacher")
        taus[name] = mean_tau(reranked, reranked["score"].to_numpy(), reranked["score_teacher"].to_numpy())
    importance = LightGBMRanker(folder).feature_importance()
    assert max(importance, key=importance.get) == "ranker_oracle"
    assert taus["stacked"] > max(taus["plain"] + 0.1, 0.8), taus


def test_feature_ranker_names_must_suit_lightgbm(splits, runs, teacher, tmp_path):
    config = LightGBMConfig(feature_rankers={"bi-encoder": "bm25"}, **FAST)
    with pytest.raises(ConfigError, match="letters, digits"):
        train_lightgbm_student(splits[0], runs[0], teacher[0], tmp_path / "m", config)
    assert not (tmp_path / "m").exists()


def test_feature_rankers_prepare_once_per_corpus(splits, runs, monkeypatch):
    """A dense ranker precomputes per corpus; another split's corpus must be prepared, not skipped."""
    import distill.rankers.loading
    from students.ranker_features import RankerFeatures

    prepared = []

    class Counting:
        name = "counting"

        def prepare(self, dataset):
            prepared.append(dataset.split)

        def rerank(self, dataset, run):
            return run.select("qid", "docid").with_columns(pl.lit(1.0).alias("score"))

    monkeypatch.setattr(distill.rankers.loading, "load_ranker", lambda spec, **kwargs: Counting())
    features = RankerFeatures({"dense": "anything"})
    (train, test), (train_run, test_run) = splits, runs
    for dataset, run in ((train, train_run), (train, train_run), (test, test_run)):
        assert features.transform(dataset, run).shape == (run.height, 1)
    assert prepared == ["train", "test"]


def test_qrels_weight_teaches_the_judgements_a_noisy_teacher_lacks(splits, runs, tmp_path):
    """With a teacher of pure noise, only the qrels can lift the student on held-out queries."""
    from distill.evaluation.metrics import metric_means

    (train, test), (train_run, test_run) = splits, runs
    noise = train_run.select("qid", "docid").with_columns(
        pl.Series("score", np.random.default_rng(0).normal(size=train_run.height)))
    quality = {}
    for weight in (0.0, 1.0):
        config = LightGBMConfig(n_estimators=100, qrels_weight=weight, **FAST)
        folder = train_lightgbm_student(train, train_run, noise, tmp_path / str(weight), config)
        ranked = LightGBMRanker(folder).rerank(test, test_run)
        quality[weight] = metric_means(test.qrels, ranked, ["nDCG@10"])["nDCG@10"]
    assert quality[1.0] > quality[0.0] + 0.2, quality
    with pytest.raises(ConfigError, match="regression"):
        train_lightgbm_student(train, train_run, noise, tmp_path / "r",
                               LightGBMConfig(objective="regression", qrels_weight=0.5))


def _unbatched_reference(train: Dataset, run: pl.DataFrame, scores: pl.DataFrame, config: LightGBMConfig):
    """The booster the student trained before its memory was bounded (issue 36): a float64 feature
    matrix, boolean-masked copies of its rows for training and validation, datasets built by lgb.train."""
    import lightgbm as lgb

    from distill.data.views import holdout
    from students import lightgbm as student

    frame = student._join_teacher(run, scores, config, None)
    config = student._resolve(config, run)
    extractor = FeatureExtractor(FeatureConfig(first_stage=config.first_stage_features)).fit(train)
    features = np.hstack([extractor.transform(train, frame), np.zeros((frame.height, 0))])
    labels = student._labels(frame, config, train.qrels)
    is_valid = frame["qid"].is_in(list(holdout(frame["qid"], config.valid_fraction, config.seed))).to_numpy()

    def dataset(rows: np.ndarray, reference=None):
        groups = frame.filter(rows).group_by("qid", maintain_order=True).len()["len"].to_numpy()
        return lgb.Dataset(features[rows], label=labels[rows], group=groups, reference=reference)

    train_set = dataset(~is_valid)
    stop = lgb.early_stopping(config.early_stopping_rounds, first_metric_only=True, verbose=False)
    booster = lgb.train(student._params(config), train_set, num_boost_round=config.n_estimators,
                        valid_sets=[dataset(is_valid, train_set)], valid_names=["valid"], callbacks=[stop])
    return booster, extractor, booster.best_iteration or booster.current_iteration()


@pytest.mark.parametrize("objective", ["lambdarank", "regression"])
def test_bounded_memory_training_keeps_the_model(objective, splits, runs, teacher, tmp_path):
    """float32 features, training rows first and the matrix dropped once binned: the same trees as before."""
    (train, test), (train_run, test_run) = splits, runs
    config = LightGBMConfig(objective=objective, n_estimators=60, early_stopping_rounds=10, **FAST)
    folder = train_lightgbm_student(train, train_run, teacher[0], tmp_path / objective, config)
    booster, extractor, best = _unbatched_reference(train, train_run, teacher[0], config)
    assert json.loads((folder / "distill.json").read_text())["best_iteration"] == best
    expected = booster.predict(extractor.transform(test, test_run), num_iteration=best)
    predicted = LightGBMRanker(folder).rerank(test, test_run)["score"].to_numpy()
    assert np.abs(predicted - expected).max() <= 1e-6
    assert np.ptp(expected) > 0  # a model that ranks, not a constant that any change would keep


def test_a_repeated_pair_is_refused_and_ids_that_only_concatenate_alike_are_not(splits, runs, teacher, tmp_path):
    train_run, scores = runs[0].select("qid", "docid"), teacher[0]
    repeated = pl.concat([train_run, train_run.head(1)])
    with pytest.raises(InputError, match="more than once"):
        train_lightgbm_student(splits[0], repeated, scores, tmp_path / "m", LightGBMConfig(**FAST))
    from distill.cache.reading import PairCodes

    pairs = pl.DataFrame({"qid": ["a", "ab", "a"], "docid": ["bc", "c", "bc"]})
    keys = PairCodes().keys(pairs)  # the student's pair keys
    assert keys.is_duplicated().to_list() == [True, False, True]  # ("a", "bc") twice; ("ab", "c") once

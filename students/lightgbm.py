"""The LightGBM student: LambdaMART over lexical features, trained on cached teacher scores.

:func:`train_lightgbm_student` joins the candidates with the teacher's scores, computes
:mod:`students.features` for every pair and fits a LightGBM booster with one of three
objectives:

- ``lambdarank`` (LambdaMART) and ``rank_xendcg``: labels are per-query teacher grades
  (:func:`students.grades.teacher_grades`), ``label_gain`` is ``2**g - 1`` for the
  ``n_grades`` grades; ``qrels_weight`` blends in the split's qrels where a query has them
  (:func:`students.grades.mix_qrels`; 1 is plain learning to rank, the baseline that says
  what the teacher adds);
- ``regression`` (L2): labels are the teacher logits, raw or (``regression_target=
  "standardized"``, the default) standardized per query, since only the order within a query
  matters and logit offsets differ between queries.

Queries are split into training and validation (``valid_fraction``, seeded); LightGBM's own
validation metric drives early stopping: ``ndcg@eval_at`` of the grades for the ranking
objectives, ``l2`` for regression (LightGBM evaluates every metric on the training labels
too, and its NDCG refuses real-valued labels). The manifest also records, for every
objective, the mean per-query Kendall tau between student and teacher on the validation
queries, the fidelity measure comparable across objectives.

Other rankers' scores can be features too (``feature_rankers``, see
:mod:`students.ranker_features`): a dense model's similarity beside the lexical features.

Memory (``scripts/bench_scale.py``, ``docs/results/scale.md``): the feature matrix is float32 (float64 with
feature rankers), the training queries' rows come first so that LightGBM's training and validation datasets
are slices of it, and it is dropped once LightGBM has binned them.

The model folder holds ``model.txt`` (LightGBM's text format), the feature extractor's
state (``features.json`` + ``.npz``/Parquet) and ``distill.json``; no pickle.
:class:`LightGBMRanker` (:mod:`students.lightgbm_ranker`, re-exported here) loads such a
folder as a :class:`~distill.rankers.base.Ranker`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from distill.cache.reading import PairCodes
from distill.core.errors import ConfigError, InputError
from distill.core.io import atomic_dir
from distill.core.manifest import write_manifest
from distill.core.schema import DOCID, QID, SCORE, require_columns
from distill.data.beir import Dataset
from distill.data.views import holdout
from students.features import FeatureConfig, FeatureExtractor
from students.grades import GRADINGS, mix_qrels, teacher_grades
from students.lightgbm_ranker import KIND, MODEL_FILE, LightGBMRanker  # noqa: F401  (LightGBMRanker: re-exported)
from students.ranker_features import RankerFeatures, check_feature_rankers, resolve_feature_rankers

log = logging.getLogger(__name__)

OBJECTIVES = ("lambdarank", "rank_xendcg", "regression")
REGRESSION_TARGETS = ("standardized", "raw")
_TEACHER = "teacher"


@dataclass
class LightGBMConfig:
    """How the LightGBM student is trained (written into its ``distill.json``).

    A field's metadata holds its ``distill train-student`` help (:mod:`distill.app.options`); ``learning_rate``,
    ``valid_fraction`` and ``seed`` are set by the options the neural students' TrainConfig makes, ``--lr``,
    ``--valid-fraction`` and ``--seed`` (:meth:`students.lightgbm_student.LightGBMStudent.from_options`).
    """

    objective: str = field(default="lambdarank", metadata={  # one of OBJECTIVES
        "help": "LightGBM: lambdarank | regression | rank_xendcg."})
    n_grades: int = field(default=5, metadata={"help": "LightGBM: teacher score grades for lambdarank."})
    # students.grades method; "log_rank" (rank 1, 2-3, 4-7, ...) keeps the top of a list apart, which
    # NDCG@10 needs: on SciFact top-100, 5 "quantile" grades put the best 20 in one grade and early
    # stopping saw a saturated NDCG@10 after 3 trees (test nDCG@10 0.21 vs 0.74 with "log_rank")
    grading: str = "log_rank"
    regression_target: str = "standardized"  # regression labels: per-query z-scores or "raw" logits
    # mixed in by students.grades.mix_qrels; on SciFact, with a CPU teacher below BM25, 0.5 lifted test
    # nDCG@10 from 0.708 to 0.738 (README)
    qrels_weight: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0, "help": (
        "LightGBM: share of a judged query's grades taken from its qrels (0: teacher only, 1: qrels only).")})
    num_leaves: int = field(default=31, metadata={"help": "LightGBM: leaves per tree."})
    learning_rate: float = 0.05
    n_estimators: int = field(default=500, metadata={"help": "LightGBM: boosting rounds at most."})
    min_data_in_leaf: int = field(default=20, metadata={"help": "LightGBM: fewest pairs in a leaf."})
    feature_fraction: float = 1.0
    valid_fraction: float = 0.2  # share of queries held out for early stopping (0: none)
    early_stopping_rounds: int = field(default=50, metadata={"help": "LightGBM: patience on the validation NDCG."})
    eval_at: int = 10  # NDCG cut-off of the validation metric (ranking objectives)
    seed: int = 0
    num_threads: int = 0  # LightGBM threads for training; 0: OpenMP's default
    max_missing_fraction: float = 0.01  # candidates allowed to lack a teacher score (they are dropped)
    first_stage_features: bool | None = None  # use the candidates' score/rank; None: when they have scores
    bm25_k1: float = 1.2
    bm25_b: float = 0.75
    # other rankers' scores as features, name -> ranker spec (students.ranker_features)
    feature_rankers: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise :class:`ConfigError` for settings LightGBM would reject or that cannot work."""
        choices = {"objective": OBJECTIVES, "regression_target": REGRESSION_TARGETS, "grading": tuple(GRADINGS)}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{getattr(self, name)!r} is not one of {list(allowed)}", field=name)
        if not 2 <= self.n_grades <= 31:
            raise ConfigError(f"n_grades must be in 2..31 (LightGBM's gains 2**g - 1), got {self.n_grades}",
                              field="n_grades")
        if not 0.0 <= self.qrels_weight <= 1.0:
            raise ConfigError(f"qrels_weight must be in [0, 1], got {self.qrels_weight}", field="qrels_weight")
        if self.qrels_weight and self.objective == "regression":
            raise ConfigError("qrels_weight mixes qrels into grades; the regression objective has none",
                              field="qrels_weight")
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ConfigError(f"valid_fraction must be in [0, 1), got {self.valid_fraction}", field="valid_fraction")
        for name in ("num_leaves", "n_estimators", "min_data_in_leaf", "early_stopping_rounds", "eval_at"):
            if getattr(self, name) < (2 if name == "num_leaves" else 1):
                raise ConfigError(f"{name} is too small: {getattr(self, name)}", field=name)
        check_feature_rankers(self.feature_rankers)


def _join_teacher(run: pl.DataFrame, scores: pl.DataFrame, config: LightGBMConfig,
                  scores_source: str | Path | None) -> pl.DataFrame:
    """The candidates with their teacher score (column ``teacher``), checked, sorted by query."""
    require_columns(run, [QID, DOCID], "candidates")
    require_columns(scores, [QID, DOCID, SCORE], "teacher scores")
    codes = PairCodes()  # one integer key per pair: a join on the two string columns took 3.4 GB at 10^7 pairs
    keys = [codes.keys(run), codes.keys(scores)]
    for frame, key, what, path in ((run, keys[0], "candidates", None), (scores, keys[1], "teacher scores",
                                                                         scores_source)):
        duplicated = key.is_duplicated()
        if duplicated.any():
            qid, docid = frame.filter(duplicated).row(0)[:2]
            raise InputError(f"{what} hold the pair ({qid}, {docid}) more than once", path=path)
    teacher = pl.DataFrame([keys[1], scores[SCORE].cast(pl.Float64).alias(_TEACHER)])
    joined = run.with_columns(keys[0]).join(teacher, on=keys[0].name, how="left", maintain_order="left")
    joined = joined.drop(keys[0].name)
    missing = joined[_TEACHER].null_count()
    if run.height == 0 or missing > config.max_missing_fraction * run.height:
        raise InputError(
            f"{missing} of {run.height} candidates ({missing / max(run.height, 1):.1%}) have no teacher score "
            f"(at most {config.max_missing_fraction:.1%} allowed); score these candidates with the teacher first",
            path=scores_source,
        )
    if missing:
        log.warning("dropping %d candidates without a teacher score", missing)
        joined = joined.drop_nulls(_TEACHER)
    bad = joined.filter(~pl.col(_TEACHER).is_finite())
    if bad.height:
        qid, docid, value = bad.select(QID, DOCID, _TEACHER).row(0)
        raise InputError(
            f"{bad.height} teacher score(s) are not finite, e.g. {value} for ({qid}, {docid}); "
            "the cache is damaged or the teacher overflowed", path=scores_source, field=SCORE,
        )
    # LightGBM needs each query's rows together; within a query, a fixed order: its nDCG breaks ties
    # between equal predictions by row order, so rows arriving in teacher order (an imported run)
    # scored a perfect nDCG at round 1 and early stopping kept 1 round.
    return joined.sort(QID, DOCID)


def _labels(frame: pl.DataFrame, config: LightGBMConfig, qrels: pl.DataFrame) -> np.ndarray:
    """Training labels: grades (mixed with ``qrels``) for the ranking objectives, (standardized)
    logits for regression."""
    if config.objective != "regression":
        if config.qrels_weight and not frame[QID].is_in(qrels[QID].implode()).any():
            log.warning("qrels_weight %s has no effect: no training query has qrels", config.qrels_weight)
        return mix_qrels(frame, _grades(frame, config), qrels, config.n_grades, config.qrels_weight)
    score = pl.col(_TEACHER)
    if config.regression_target == "standardized":
        std = score.std(ddof=0).over(QID)
        score = pl.when(std > 0).then((score - score.mean().over(QID)) / std).otherwise(0.0)
    return frame.select(score).to_series().to_numpy()


def _grades(frame: pl.DataFrame, config: LightGBMConfig) -> np.ndarray:
    return teacher_grades(frame.select(QID, pl.col(_TEACHER).alias(SCORE)), config.n_grades,
                          config.grading).to_numpy()


def _lgb_dataset(features: np.ndarray, labels: np.ndarray, frame: pl.DataFrame, names: list[str],
                 params: dict[str, Any], reference: Any = None):
    """A LightGBM dataset of ``frame``'s rows, built with the training ``params`` (so that ``lgb.train``
    finds it constructed as it would have constructed it) and not keeping ``features`` once binned."""
    import lightgbm as lgb

    groups = frame.group_by(QID, maintain_order=True).len()["len"].to_numpy()
    return lgb.Dataset(features, label=labels, group=groups, feature_name=names, reference=reference,
                       params=params, free_raw_data=True)


@dataclass
class _Matrix:
    """The features (``[rows, names]``), labels and feature names of a student's rows, training rows first.

    :func:`_fit` drops ``features`` once LightGBM has binned them, keeping only the validation rows' copy.
    """

    features: np.ndarray | None
    labels: np.ndarray
    names: list[str]


def _mean_kendall_tau(frame: pl.DataFrame, predicted: np.ndarray) -> float:
    """Mean over queries of Kendall's tau-b between predicted and teacher scores (a constant list counts 0)."""
    from scipy.stats import kendalltau

    taus = []
    with_pred = frame.select(QID, _TEACHER).with_columns(pl.Series("_pred", predicted))
    for part in with_pred.partition_by(QID, maintain_order=True):  # per query: a few hundred at most
        tau = kendalltau(part["_pred"].to_numpy(), part[_TEACHER].to_numpy()).statistic
        taus.append(0.0 if math.isnan(tau) else float(tau))
    return float(np.mean(taus)) if taus else float("nan")


def _resolve(config: LightGBMConfig, run: pl.DataFrame) -> LightGBMConfig:
    """``config`` with what it leaves open settled, so that the manifest records what was used: feature
    ranker paths made absolute, first-stage features on when the candidates carry scores."""
    config = replace(config, feature_rankers=resolve_feature_rankers(config.feature_rankers))
    if config.first_stage_features is None:
        config = replace(config, first_stage_features=SCORE in run.columns)
    return config


def _split(frame: pl.DataFrame, config: LightGBMConfig) -> tuple[pl.DataFrame, int]:
    """``frame``'s rows of the training queries, then those of the validation queries (a seeded
    ``valid_fraction`` of them, :func:`distill.data.views.holdout`), each part in ``frame``'s order;
    and the number of training rows. The two LightGBM datasets are then slices of one feature
    matrix, not copies of its rows."""
    valid = holdout(frame[QID].unique(), config.valid_fraction, config.seed)
    is_valid = frame[QID].is_in(pl.Series(QID, sorted(valid), dtype=pl.String).implode())
    ordered = frame.with_columns(is_valid.alias("_valid")).sort("_valid", maintain_order=True).drop("_valid")
    return ordered, frame.height - int(is_valid.sum())


def _features(dataset: Dataset, frame: pl.DataFrame, config: LightGBMConfig) -> tuple[FeatureExtractor, _Matrix]:
    """The extractor fitted on ``dataset``'s corpus and the features of ``frame``'s rows (lexical
    features, then the feature rankers' scores) with their labels.

    Lexical features alone stay float32 as the extractor makes them (LightGBM bins float32 and
    the same values in float64 alike); other rankers' scores are float64, so with them the matrix is.
    """
    extractor = FeatureExtractor(FeatureConfig(k1=config.bm25_k1, b=config.bm25_b,
                                               first_stage=config.first_stage_features))
    stacked = RankerFeatures(config.feature_rankers)
    features = extractor.fit(dataset).transform(dataset, frame)
    if stacked.specs:
        features = np.hstack([features, stacked.transform(dataset, frame)])
    return extractor, _Matrix(features, _labels(frame, config, dataset.qrels),
                              extractor.feature_names + stacked.feature_names)


def _params(config: LightGBMConfig) -> dict[str, Any]:
    """LightGBM's training parameters for ``config``."""
    return {
        "objective": config.objective, "metric": _metric(config), "eval_at": [config.eval_at],
        "label_gain": [2.0**g - 1 for g in range(config.n_grades)],
        "num_leaves": config.num_leaves, "learning_rate": config.learning_rate,
        "min_data_in_leaf": config.min_data_in_leaf, "feature_fraction": config.feature_fraction,
        "seed": config.seed, "deterministic": True, "force_row_wise": True,
        "num_threads": config.num_threads, "verbosity": -1,
    }


def _metric(config: LightGBMConfig) -> str:
    """LightGBM's validation metric: ``l2`` for regression, ``ndcg`` (at ``eval_at``) for the ranking objectives."""
    return "l2" if config.objective == "regression" else "ndcg"


def _fit(config: LightGBMConfig, frame: pl.DataFrame, matrix: _Matrix,
         n_train: int) -> tuple[Any, int, dict[str, Any]]:
    """Train a booster on ``frame``'s first ``n_train`` rows, stopping early on the rows after them.

    Returns the booster, the number of rounds to keep and the validation record of the manifest
    (validation metric and Kendall tau to the teacher at that round, when there are validation rows).
    """
    import lightgbm as lgb

    params = _params(config)
    train, valid = frame.head(n_train), frame.slice(n_train)
    train_set = _lgb_dataset(matrix.features[:n_train], matrix.labels[:n_train], train, matrix.names, params)
    valid_sets, callbacks, evals = [], [], {}
    if valid.height:
        valid_sets = [_lgb_dataset(matrix.features[n_train:], matrix.labels[n_train:], valid, matrix.names, params,
                                   train_set)]
        callbacks = [lgb.early_stopping(config.early_stopping_rounds, first_metric_only=True, verbose=False),
                     lgb.record_evaluation(evals)]
    valid_features = _bin(matrix, [train_set, *valid_sets], n_train)
    booster = lgb.train(params, train_set, num_boost_round=config.n_estimators, valid_sets=valid_sets,
                        valid_names=["valid"][: len(valid_sets)], callbacks=callbacks)
    best_iteration = booster.best_iteration or booster.current_iteration()
    validation: dict[str, Any] = {"queries": valid[QID].n_unique(), "pairs": valid.height}
    if valid.height:
        metric = _metric(config)
        name = metric if metric == "l2" else f"ndcg@{config.eval_at}"
        validation[name] = evals["valid"][name][best_iteration - 1]
        predicted = booster.predict(valid_features, num_iteration=best_iteration)
        validation["kendall_tau"] = _mean_kendall_tau(valid, predicted)
    log.info("LightGBM %s: %d rounds kept, validation %s", config.objective, best_iteration, validation)
    return booster, best_iteration, validation


def _bin(matrix: _Matrix, datasets: list[Any], n_train: int) -> np.ndarray:
    """Construct (bin) the LightGBM ``datasets`` and drop ``matrix.features``; returns a copy of
    the validation rows' features (rows from ``n_train`` on), which the Kendall tau needs later.
    Training then holds LightGBM's binned rows (a byte or two per feature) instead of the matrix."""
    for dataset in datasets:
        dataset.construct()
    valid_features = np.array(matrix.features[n_train:])
    matrix.features = None
    return valid_features


def train_lightgbm_student(
    dataset: Dataset,
    run: pl.DataFrame,
    scores: pl.DataFrame,
    out: str | Path,
    config: LightGBMConfig | None = None,
    *,
    teacher_fingerprint: dict | None = None,
    scores_source: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Train a LightGBM student on ``run``'s candidates (``qid, docid[, score, rank]``) scored by the
    teacher (``scores``: ``qid, docid, score``) and write its folder to ``out`` atomically (replacing an
    earlier LightGBM student only, unless ``overwrite``). ``scores_source`` (the cache folder) names where
    the scores came from in error messages; ``teacher_fingerprint`` is recorded in the manifest.
    """
    config = config or LightGBMConfig()
    config.validate()
    frame = _join_teacher(run, scores, config, scores_source)
    config = _resolve(config, run)
    frame, n_train = _split(frame, config)
    extractor, matrix = _features(dataset, frame, config)
    names = matrix.names
    booster, best_iteration, validation = _fit(config, frame, matrix, n_train)
    train = frame.head(n_train)
    out = Path(out)
    with atomic_dir(out, kind=KIND, overwrite=overwrite) as tmp:
        booster.save_model(str(tmp / MODEL_FILE), num_iteration=best_iteration)
        extractor.save(tmp)
        write_manifest(
            tmp, KIND, config, feature_names=names, best_iteration=best_iteration, validation=validation,
            training={"queries": train[QID].n_unique(), "pairs": train.height, "dataset": dataset.name,
                      "split": dataset.split, "candidates_dropped": run.height - frame.height},
            teacher=teacher_fingerprint,
        )
    return out

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

The model folder holds ``model.txt`` (LightGBM's text format), the feature extractor's
state (``features.json`` + ``.npz``/Parquet) and ``distill.json``; no pickle.
:class:`LightGBMRanker` loads such a folder as a :class:`~distill.rankers.base.Ranker`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from distill.core.errors import ConfigError, InputError
from distill.core.io import atomic_dir
from distill.core.manifest import frame_hash, write_manifest
from distill.core.schema import DOCID, QID, RANK, SCORE, TEXT, require_columns
from distill.data.beir import Dataset
from distill.rankers.base import BaseRanker
from distill.training.groups import holdout
from students.features import FeatureConfig, FeatureExtractor
from students.grades import GRADINGS, mix_qrels, teacher_grades
from students.ranker_features import RankerFeatures, check_feature_rankers, resolve_feature_rankers

if TYPE_CHECKING:
    from distill.cascade.runtime import Documents

log = logging.getLogger(__name__)

KIND = "lightgbm-student"
MODEL_FILE = "model.txt"
OBJECTIVES = ("lambdarank", "rank_xendcg", "regression")
REGRESSION_TARGETS = ("standardized", "raw")
_TEACHER = "teacher"


@dataclass
class LightGBMConfig:
    """How the LightGBM student is trained (written into its ``distill.json``)."""

    objective: str = "lambdarank"  # one of OBJECTIVES
    n_grades: int = 5  # teacher grades for lambdarank / rank_xendcg
    # students.grades method; "log_rank" (rank 1, 2-3, 4-7, ...) keeps the top of a list apart, which
    # NDCG@10 needs: on SciFact top-100, 5 "quantile" grades put the best 20 in one grade and early
    # stopping saw a saturated NDCG@10 after 3 trees (test nDCG@10 0.21 vs 0.74 with "log_rank")
    grading: str = "log_rank"
    regression_target: str = "standardized"  # regression labels: per-query z-scores or "raw" logits
    # share of a judged query's grades taken from its qrels (students.grades.mix_qrels); on SciFact,
    # with a CPU teacher below BM25, 0.5 lifted test nDCG@10 from 0.708 to 0.738 (README)
    qrels_weight: float = 0.0
    num_leaves: int = 31
    learning_rate: float = 0.05
    n_estimators: int = 500  # boosting rounds at most
    min_data_in_leaf: int = 20
    feature_fraction: float = 1.0
    valid_fraction: float = 0.2  # share of queries held out for early stopping (0: none)
    early_stopping_rounds: int = 50
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
    for frame, what, path in ((run, "candidates", None), (scores, "teacher scores", scores_source)):
        duplicated = frame.select(QID, DOCID).is_duplicated()
        if duplicated.any():
            qid, docid = frame.filter(duplicated).row(0)[:2]
            raise InputError(f"{what} hold the pair ({qid}, {docid}) more than once", path=path)
    teacher = scores.select(QID, DOCID, pl.col(SCORE).cast(pl.Float64).alias(_TEACHER))
    joined = run.join(teacher, on=[QID, DOCID], how="left", maintain_order="left")
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
    return joined.sort(QID, maintain_order=True)  # LightGBM needs each query's rows together


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
                 reference: Any = None):
    import lightgbm as lgb

    groups = frame.group_by(QID, maintain_order=True).len()["len"].to_numpy()
    return lgb.Dataset(features, label=labels, group=groups, feature_name=names, reference=reference,
                       free_raw_data=True)


def _mean_kendall_tau(frame: pl.DataFrame, predicted: np.ndarray) -> float:
    """Mean over queries of Kendall's tau-b between predicted and teacher scores (a constant list counts 0)."""
    from scipy.stats import kendalltau

    taus = []
    with_pred = frame.select(QID, _TEACHER).with_columns(pl.Series("_pred", predicted))
    for part in with_pred.partition_by(QID, maintain_order=True):  # per query: a few hundred at most
        tau = kendalltau(part["_pred"].to_numpy(), part[_TEACHER].to_numpy()).statistic
        taus.append(0.0 if math.isnan(tau) else float(tau))
    return float(np.mean(taus)) if taus else float("nan")


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
    import lightgbm as lgb

    config = config or LightGBMConfig()
    config.validate()
    frame = _join_teacher(run, scores, config, scores_source)
    # resolved here, so the manifest records what was used
    config = replace(config, feature_rankers=resolve_feature_rankers(config.feature_rankers))
    if config.first_stage_features is None:
        config = replace(config, first_stage_features=SCORE in run.columns)
    first_stage = config.first_stage_features
    extractor = FeatureExtractor(FeatureConfig(k1=config.bm25_k1, b=config.bm25_b, first_stage=first_stage))
    stacked = RankerFeatures(config.feature_rankers)
    features = np.hstack([extractor.fit(dataset).transform(dataset, frame), stacked.transform(dataset, frame)])
    names = extractor.feature_names + stacked.feature_names
    labels = _labels(frame, config, dataset.qrels)
    is_valid = frame[QID].is_in(list(holdout(frame[QID], config.valid_fraction, config.seed))).to_numpy()
    train, valid = frame.filter(~is_valid), frame.filter(is_valid)
    metric = "l2" if config.objective == "regression" else "ndcg"
    params = {
        "objective": config.objective, "metric": metric, "eval_at": [config.eval_at],
        "label_gain": [2.0**g - 1 for g in range(config.n_grades)],
        "num_leaves": config.num_leaves, "learning_rate": config.learning_rate,
        "min_data_in_leaf": config.min_data_in_leaf, "feature_fraction": config.feature_fraction,
        "seed": config.seed, "deterministic": True, "force_row_wise": True,
        "num_threads": config.num_threads, "verbosity": -1,
    }
    train_set = _lgb_dataset(features[~is_valid], labels[~is_valid], train, names)
    valid_sets, callbacks, evals = [], [], {}
    if valid.height:
        valid_sets = [_lgb_dataset(features[is_valid], labels[is_valid], valid, names, train_set)]
        callbacks = [lgb.early_stopping(config.early_stopping_rounds, first_metric_only=True, verbose=False),
                     lgb.record_evaluation(evals)]
    booster = lgb.train(params, train_set, num_boost_round=config.n_estimators, valid_sets=valid_sets,
                        valid_names=["valid"][: len(valid_sets)], callbacks=callbacks)
    best_iteration = booster.best_iteration or booster.current_iteration()
    validation: dict[str, Any] = {"queries": valid[QID].n_unique(), "pairs": valid.height}
    if valid.height:
        name = metric if metric == "l2" else f"ndcg@{config.eval_at}"
        validation[name] = evals["valid"][name][best_iteration - 1]
        predicted = booster.predict(features[is_valid], num_iteration=best_iteration)
        validation["kendall_tau"] = _mean_kendall_tau(valid, predicted)
    log.info("LightGBM %s: %d rounds kept, validation %s", config.objective, best_iteration, validation)

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


class LightGBMRanker(BaseRanker):
    """A trained LightGBM student as a :class:`~distill.rankers.base.BaseRanker`.

    Features use the corpus statistics saved with the model when the dataset's corpus is the
    one it was trained on, and statistics fitted on the new corpus otherwise (as BM25 would).
    :meth:`prepare` does that once, outside per-query latency; :meth:`rerank` calls it when needed.

    Per query the work is small: the documents' side of the features was computed at fit
    time, the query is analysed once, every row's features come from one vectorized pass
    (:meth:`students.features.FeatureExtractor.features`) and the trees score a contiguous
    float32 array on ``num_threads`` threads (default 1: a hundred rows are too few to share).
    :meth:`prepare_runtime` and :meth:`score_documents` serve :mod:`distill.cascade.runtime`.
    """

    def __init__(self, path: str | Path, num_threads: int = 1) -> None:
        import lightgbm as lgb

        self.path = Path(path)
        manifest_path = self.path / "distill.json"
        if not manifest_path.is_file():
            raise InputError("not a distill model folder (no distill.json)", path=self.path)
        self.manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if self.manifest.get("kind") != KIND:
            raise InputError(f"expected a {KIND} folder, found kind {self.manifest.get('kind')!r}",
                             path=manifest_path, field="kind")
        if not (self.path / MODEL_FILE).is_file():
            raise InputError("LightGBM model missing", path=self.path / MODEL_FILE)
        self.booster = lgb.Booster(model_file=str(self.path / MODEL_FILE))
        self.num_threads = num_threads
        self.name = f"lightgbm:{self.path.name}"
        self._saved: FeatureExtractor | None = None
        self._extractor: FeatureExtractor | None = None
        self._stacked = RankerFeatures(self.manifest.get("config", {}).get("feature_rankers", {}))
        self._corpus: pl.DataFrame | None = None
        self._queries: pl.DataFrame | None = None
        self._query_text: dict[str, str] = {}
        self._runtime_rows: np.ndarray | None = None

    def _saved_extractor(self) -> FeatureExtractor:
        """The feature extractor saved with the model (its training corpus), checked against the trees."""
        if self._saved is None:
            saved = FeatureExtractor.load(self.path)
            expected = saved.feature_names + self._stacked.feature_names
            if expected != self.booster.feature_name():
                raise InputError(
                    f"model features {self.booster.feature_name()} differ from the saved extractor's "
                    f"and feature rankers' {expected}", path=self.path,
                )
            self._saved = saved
        return self._saved

    def prepare(self, dataset: Dataset) -> None:
        """Get the corpus statistics for ``dataset``: the saved ones, or fitted when its corpus differs."""
        saved = self._saved_extractor()
        if saved.corpus_hash == frame_hash(dataset.corpus):
            self._extractor = saved
        else:
            log.info("%s: corpus of %r differs from the training corpus; fitting its statistics",
                     self.name, dataset.name)
            self._extractor = FeatureExtractor(saved.config).fit(dataset)
        self._stacked.prepare(dataset)
        self._corpus = dataset.corpus

    def rerank(self, dataset: Dataset, run: pl.DataFrame) -> pl.DataFrame:
        if self._extractor is None or self._corpus is not dataset.corpus:
            self.prepare(dataset)
        if run.height and run[QID].n_unique() == 1:  # one query (a cascade's, a latency measurement's)
            features = self._one_query(dataset, run)
        else:
            features = self._extractor.transform(dataset, run)
        if self._stacked.specs:
            features = np.hstack([features, self._stacked.transform(dataset, run)])
        # a DataFrame built from its columns: select/with_columns go through polars' query engine,
        # whose fixed cost per call is larger than the rest of a query's work on a busy machine
        return pl.DataFrame({QID: run[QID], DOCID: run[DOCID],
                             SCORE: pl.Series(SCORE, self._predict(features), dtype=pl.Float64)})

    def _one_query(self, dataset: Dataset, run: pl.DataFrame) -> np.ndarray:
        """The features ``transform`` computes for a run of one query, without its joins: query
        texts and document rows come from dictionaries."""
        extractor, qid = self._extractor, run[QID][0]
        if self._queries is not dataset.queries:
            self._queries = dataset.queries
            self._query_text = dict(zip(dataset.queries[QID].to_list(), dataset.queries[TEXT].to_list(), strict=True))
        if qid not in self._query_text:
            raise InputError(f"query {qid!r} of the run is not in dataset {dataset.name!r}", field=QID)
        docids = run[DOCID].to_list()
        rows = extractor.rows_of(docids)
        if (rows < 0).any():
            raise InputError(f"document {docids[int(np.argmin(rows))]!r} is not in the corpus the features "
                             "were fitted on; fit (or prepare) on this dataset", field=DOCID)
        first_stage = None
        if extractor.config.first_stage:
            if SCORE not in run.columns:
                raise InputError(f"the features include the first-stage score, but the run has no '{SCORE}' "
                                 f"column (columns: {run.columns})", field=SCORE)
            first_stage = run[SCORE].cast(pl.Float64).to_numpy()
        features = extractor.features(self._query_text[qid], rows, first_stage=first_stage)
        if first_stage is not None and RANK in run.columns:  # a run's own ranks, as transform takes them
            features[:, len(extractor.feature_names) - 1] = run[RANK].cast(pl.Float64).to_numpy()
        return features

    def _predict(self, features: np.ndarray) -> np.ndarray:
        if not len(features):
            return np.zeros(0)
        return self.booster.predict(np.ascontiguousarray(features), num_threads=self.num_threads)

    def prepare_runtime(self, corpus: Dataset | None) -> None:
        """Ready :meth:`score_documents` (:mod:`distill.cascade.runtime`): with ``corpus``, its documents'
        features come from the saved index (or, for another corpus, from statistics fitted on it,
        as :meth:`prepare` does); documents outside it are scored with those statistics."""
        if corpus is None:
            self._extractor, self._runtime_rows = self._saved_extractor(), None
        else:
            self.prepare(corpus)
            self._runtime_rows = self._extractor.rows_of(corpus.corpus[DOCID].to_list())
        self._stacked.prepare_runtime(corpus)

    def score_documents(self, query: str, docs: Documents) -> np.ndarray:
        """Scores of one query's documents (:class:`distill.cascade.runtime.Documents`), in their order."""
        if self._extractor is None:
            raise InputError("call prepare_runtime before score_documents")
        rows = np.full(len(docs), -1, dtype=np.int64)
        if self._runtime_rows is not None:
            known = docs.rows >= 0
            rows[known] = self._runtime_rows[docs.rows[known]]
        features = self._extractor.features(query, rows, docs.titles, docs.texts, docs.first_stage)
        if self._stacked.specs:
            features = np.hstack([features, self._stacked.score_documents(query, docs)])
        return self._predict(features)

    def feature_importance(self) -> dict[str, float]:
        """Total gain of the splits on each feature (for reports)."""
        gains = self.booster.feature_importance(importance_type="gain")
        return dict(zip(self.booster.feature_name(), (float(g) for g in gains), strict=True))

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "kind": KIND, "path": str(self.path), "config": self.manifest.get("config", {}),
            "best_iteration": self.manifest.get("best_iteration"), "feature_names": self.booster.feature_name(),
            "teacher": self.manifest.get("teacher"), "num_threads": self.num_threads,
        }


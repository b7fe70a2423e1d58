"""A trained LightGBM student as a ranker: the model folder that :mod:`students.lightgbm` writes.

The folder holds ``model.txt`` (LightGBM's text format), the feature extractor's state
(``features.json`` + ``.npz``/Parquet, :mod:`students.features`) and ``distill.json`` (kind
``lightgbm-student``); no pickle. :class:`LightGBMRanker` loads it as a
:class:`~distill.rankers.base.Ranker` and as a :mod:`distill.cascade.runtime` scorer.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from distill.core.errors import InputError
from distill.core.io import read_json
from distill.core.manifest import frame_hash
from distill.core.schema import DOCID, QID, SCORE, TEXT
from distill.data.beir import Dataset
from distill.rankers.base import BaseRanker
from students.features import FeatureExtractor
from students.ranker_features import RankerFeatures

if TYPE_CHECKING:
    from distill.rankers.documents import Documents

log = logging.getLogger(__name__)

KIND = "lightgbm-student"
MODEL_FILE = "model.txt"


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
        self.manifest = read_json(manifest_path)
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
        qid = run[QID][0]
        if self._queries is not dataset.queries:
            self._queries = dataset.queries
            self._query_text = dict(zip(dataset.queries[QID].to_list(), dataset.queries[TEXT].to_list(), strict=True))
        if qid not in self._query_text:
            raise InputError(f"query {qid!r} of the run is not in dataset {dataset.name!r}", field=QID)
        return self._extractor.transform_query(self._query_text[qid], run)

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
        """Scores of one query's documents (:class:`distill.rankers.documents.Documents`), in their order."""
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


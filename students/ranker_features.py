"""Other rankers' scores as features of the LightGBM student (stacking).

Lexical features alone barely move past BM25 on SciFact: LambdaMART on them reached 0.680
nDCG@10 against BM25's 0.679 even with the gold qrels as labels. A dense model sees what word
matching misses, and LambdaMART can learn when to trust which, so a ranker's score (e.g. the
bi-encoder student's similarity) can be one more column. LightGBM knows nothing of models
that score pairs, hence this module: any ranker that :func:`distill.rankers.loading.load_ranker` can
load (a model folder, a teacher cache, a TREC run file) names a feature ``ranker_<name>``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from distill.core.errors import ConfigError, InputError
from distill.core.schema import DOCID, QID, SCORE
from distill.data.beir import Dataset

if TYPE_CHECKING:
    from distill.rankers.documents import Documents

FEATURE_PREFIX = "ranker_"
# LightGBM refuses feature names with JSON's special characters; keep names plain
_NAME = re.compile(r"[A-Za-z0-9_]+")


def check_feature_rankers(specs: Mapping[str, str]) -> None:
    """Raise :class:`ConfigError` for a name LightGBM would refuse or an empty spec."""
    for name, spec in specs.items():
        if not _NAME.fullmatch(name):
            raise ConfigError(f"feature ranker name {name!r} must be letters, digits and '_'",
                              field="feature_rankers")
        if not str(spec).strip():
            raise ConfigError(f"feature ranker {name!r} has no spec", field="feature_rankers")


def resolve_feature_rankers(specs: Mapping[str, str]) -> dict[str, str]:
    """``specs`` with paths that exist made absolute, so a saved model finds them from anywhere."""
    return {name: str(Path(spec).resolve()) if Path(spec).exists() else spec for name, spec in specs.items()}


class RankerFeatures:
    """The scores of ``specs``' rankers for every candidate, one column per ranker."""

    def __init__(self, specs: Mapping[str, str], **ranker_kwargs: Any) -> None:
        check_feature_rankers(specs)
        self.specs = dict(specs)
        self.ranker_kwargs = ranker_kwargs
        self._rankers: dict[str, Any] | None = None
        self._corpus: Any = None
        self._scorers: dict[str, Any] = {}

    @property
    def feature_names(self) -> list[str]:
        return [FEATURE_PREFIX + name for name in self.specs]

    def prepare(self, dataset: Dataset) -> None:
        """Load the rankers once and let each precompute what it can for ``dataset``'s corpus."""
        from distill.rankers.loading import load_ranker

        if self._rankers is None:
            self._rankers = {name: load_ranker(spec, name=name, **self.ranker_kwargs)
                             for name, spec in self.specs.items()}
        for ranker in self._rankers.values():
            ranker.prepare(dataset)
        self._corpus = dataset.corpus

    def prepare_runtime(self, corpus: Dataset | None) -> None:
        """Load the rankers as :mod:`distill.cascade.runtime` scorers (a teacher cache becomes its model)."""
        from distill.cascade.runtime import DocumentScorer, runtime_ranker
        from distill.rankers.loading import load_ranker

        self._scorers = {name: DocumentScorer(runtime_ranker(name, load_ranker(spec, name=name, **self.ranker_kwargs)),
                                              corpus)
                         for name, spec in self.specs.items()}

    def score_documents(self, query: str, docs: Documents) -> np.ndarray:
        """``[len(docs), len(specs)]`` scores of one query's documents, NaN where not finite."""
        if not self.specs:
            return np.zeros((len(docs), 0))
        matrix = np.column_stack([scorer(query, docs) for scorer in self._scorers.values()])
        return np.where(np.isfinite(matrix), matrix, np.nan)

    def transform(self, dataset: Dataset, run: pl.DataFrame) -> np.ndarray:
        """``[len(run), len(specs)]`` scores in ``run``'s row order; NaN (LightGBM's missing value)
        where a ranker has no finite score."""
        if not self.specs:
            return np.zeros((run.height, 0))
        if self._corpus is not dataset.corpus:  # a bi-encoder would embed each list's documents again
            self.prepare(dataset)
        pairs = run.select(QID, DOCID)
        columns = []
        for name, ranker in self._rankers.items():
            scored = ranker.rerank(dataset, pairs).select(QID, DOCID, SCORE)
            joined = pairs.join(scored, on=[QID, DOCID], how="left", maintain_order="left")
            if joined.height != pairs.height:
                raise InputError(f"feature ranker {name!r} returned repeated (qid, docid) pairs",
                                 field="feature_rankers")
            columns.append(joined[SCORE].cast(pl.Float64).fill_null(float("nan")).to_numpy())
        matrix = np.column_stack(columns)
        return np.where(np.isfinite(matrix), matrix, np.nan)

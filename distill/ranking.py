"""The contract every reranker follows: teachers, students and cascade stages alike.

A ranker scores the (qid, docid) rows of a candidate run. Keeping this one method lets
evaluation, latency measurement and cascades treat BM25, LightGBM, a bi-encoder and a
cross-encoder the same way.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import polars as pl

from distill.data import Dataset


@runtime_checkable
class Ranker(Protocol):
    """Something that scores candidates.

    ``rerank`` returns ``qid, docid, score`` for exactly the rows of ``run`` (any order);
    higher scores rank first.
    """

    name: str

    def rerank(self, dataset: Dataset, run: pl.DataFrame) -> pl.DataFrame: ...

    def get_config_dict(self) -> dict[str, Any]: ...

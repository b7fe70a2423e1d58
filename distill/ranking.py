"""The contract every reranker follows: teachers, students and cascade stages alike.

A ranker scores the (qid, docid) rows of a candidate run. Keeping this one method lets
evaluation, latency measurement and cascades treat BM25, LightGBM, a bi-encoder and a
cross-encoder the same way.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import polars as pl

from distill.data import Dataset
from distill.schema import DOCID, QID

# how many pairs a pending reduced precision is checked on (teachers.precision uses it too)
SETTLE_PAIRS = 256


@runtime_checkable
class Ranker(Protocol):
    """Something that scores candidates.

    ``rerank`` returns ``qid, docid, score`` for exactly the rows of ``run`` (any order);
    higher scores rank first.
    """

    name: str

    def rerank(self, dataset: Dataset, run: pl.DataFrame) -> pl.DataFrame: ...

    def get_config_dict(self) -> dict[str, Any]: ...


def settle_precision(ranker: Any, dataset: Dataset, run: pl.DataFrame) -> None:
    """Let ``ranker`` check a pending reduced precision on up to :data:`SETTLE_PAIRS` of ``run``'s pairs.

    A model asked for bf16/fp16 keeps it only if its scores agree with fp32 on the pairs it
    first sees; a query's few pairs can pass where a larger sample fails, so callers that
    score query by query settle it here first. Rankers without a pending precision ignore it.
    """
    settle = getattr(ranker, "settle_precision", None)
    if settle is not None and run.height:
        sample = run.head(SETTLE_PAIRS)
        settle(dataset.query_texts(sample[QID]), dataset.doc_texts(sample[DOCID]))

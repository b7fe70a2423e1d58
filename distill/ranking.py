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

# how many pairs a model's precision is measured and checked on (teachers.precision uses it too):
# tens of pairs, so that choosing it costs a small share of any run
SETTLE_PAIRS = 32


@runtime_checkable
class Ranker(Protocol):
    """Something that scores candidates.

    ``rerank`` returns ``qid, docid, score`` for exactly the rows of ``run`` (any order);
    higher scores rank first.
    """

    name: str

    def rerank(self, dataset: Dataset, run: pl.DataFrame) -> pl.DataFrame: ...

    def get_config_dict(self) -> dict[str, Any]: ...


def settle_precision(ranker: Any, dataset: Dataset, run: pl.DataFrame, seed: int = 0) -> None:
    """Let ``ranker`` settle its precision on a seeded sample of :data:`SETTLE_PAIRS` of ``run``'s pairs.

    A model asked for ``auto`` (or bf16/fp16) times and checks its precisions against fp32
    on the pairs it first sees; one query's few pairs say little about speed or fidelity,
    so callers that score query by query settle it here first, on pairs drawn from all
    queries. Rankers without a pending precision ignore it.
    """
    settle = getattr(ranker, "settle_precision", None)
    if settle is not None and run.height:
        sample = run.sample(min(SETTLE_PAIRS, run.height), seed=seed)
        settle(dataset.query_texts(sample[QID]), dataset.doc_texts(sample[DOCID]))

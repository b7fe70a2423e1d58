"""The contract every reranker follows: teachers, students and cascade stages alike.

A ranker scores the (qid, docid) rows of a candidate run. Keeping this one method lets
evaluation, latency measurement and cascades treat BM25, LightGBM, a bi-encoder and a
cross-encoder the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import polars as pl

from distill.core.schema import DOCID, QID
from distill.data.beir import Dataset

# how many pairs a model's precision is measured and checked on (teachers.precision uses it too):
# tens of pairs, so that choosing it costs a small share of any run
SETTLE_PAIRS = 32


class BaseRanker(ABC):
    """Something that scores candidates, and the optional capabilities distill may use.

    ``rerank`` returns ``qid, docid, score`` for exactly the rows of ``run`` (any order);
    higher scores rank first. The other methods are capabilities with no-op defaults that a
    ranker overrides when it has them, so evaluation, timing, cascades and serving call them
    on every ranker alike instead of probing for attributes.
    """

    name: str = ""

    @abstractmethod
    def rerank(self, dataset: Dataset, run: pl.DataFrame) -> pl.DataFrame: ...

    def get_config_dict(self) -> dict[str, Any]:
        """What identifies this ranker in reports and manifests."""
        return {"class": type(self).__name__}

    def prepare(self, dataset: Dataset) -> None:
        """One-off work for a dataset's corpus before scoring it (e.g. document embeddings),
        kept out of per-query latency; nothing by default."""
        return None

    def settle_precision(self, queries: Sequence[str], docs: Sequence[str], total_pairs: int | None = None) -> Any:
        """Choose a pending reduced precision on these pairs, a sample of the ``total_pairs`` (default:
        these) about to be scored (see :func:`settle_precision`); nothing by default."""
        return None

    def without_precomputation(self) -> BaseRanker | None:
        """This ranker as it runs without what :meth:`prepare` precomputes (a bi-encoder that
        embeds each query's documents), to time that cost; None when it precomputes nothing."""
        return None

    def live(self) -> BaseRanker | None:
        """The ranker that scores pairs it has not seen: itself, a teacher cache's teacher
        model, or None (a run file's fixed scores)."""
        return self

    def run_stats(self) -> dict[str, Any]:
        """What the last :meth:`rerank` did beyond scoring (a cascade's skipped stages and
        latency); empty by default."""
        return {}

    def feature_importance(self) -> dict[str, float]:
        """Each input feature's importance by name (a LightGBM student's total gain); empty
        by default."""
        return {}


# The name type hints across distill use for a ranker.
Ranker = BaseRanker


def settle_precision(ranker: BaseRanker, dataset: Dataset, run: pl.DataFrame, seed: int = 0) -> None:
    """Let ``ranker`` settle its precision on a seeded sample of :data:`SETTLE_PAIRS` of ``run``'s pairs.

    A model asked for ``auto`` (or bf16/fp16) times and checks its precisions against fp32
    on the pairs it first sees; one query's few pairs say little about speed or fidelity,
    so callers that score query by query settle it here first, on pairs drawn from all
    queries. Rankers without a pending precision ignore it.
    """
    settle = ranker.settle_precision
    if run.height and getattr(settle, "__func__", settle) is not BaseRanker.settle_precision:  # the no-op default
        sample = run.sample(min(SETTLE_PAIRS, run.height), seed=seed)
        settle(dataset.query_texts(sample[QID]), dataset.doc_texts(sample[DOCID]), total_pairs=run.height)

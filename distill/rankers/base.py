"""The contract every reranker follows: teachers, students and cascade stages alike.

A ranker scores the (qid, docid) rows of a candidate run. Keeping this one method lets
evaluation, latency measurement and cascades treat BM25, LightGBM, a bi-encoder and a
cross-encoder the same way. The in-process runtime (:mod:`distill.cascade.runtime`) scores one
query's :class:`~distill.rankers.documents.Documents` through :meth:`BaseRanker.score_documents`,
which every ranker has: its own, or a default through ``score`` or ``rerank``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from distill.core.schema import DOCID, QID, SCORE
from distill.data.beir import Dataset
from distill.rankers.documents import Documents

# how many pairs a model's precision is measured and checked on (teachers.precision uses it too):
# tens of pairs, so that choosing it costs a small share of any run
SETTLE_PAIRS = 32


class BaseRanker(ABC):
    """Something that scores candidates, and the optional capabilities distill may use.

    ``rerank`` returns ``qid, docid, score`` for exactly the rows of ``run`` (any order);
    higher scores rank first. The other methods are capabilities with defaults (a no-op, or
    :meth:`score_documents` through ``rerank``) that a ranker overrides when it has them, so
    evaluation, timing, cascades and serving call them on every ranker alike instead of probing
    for attributes; :func:`declares` tells whether a ranker has its own.
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

    # -- in process: one query's documents (distill.cascade.runtime) ---------------------------

    def prepare_runtime(self, corpus: Dataset | None) -> None:
        """One-off work before :meth:`score_documents` is called (an index, embeddings of ``corpus``'s
        documents, which requests may name by id; None: every document comes as text); nothing by
        default."""
        return None

    def score(self, queries: Sequence[str], docs: Sequence[str]) -> np.ndarray:
        """Scores of the pairs ``zip(queries, docs)`` in input order, for a ranker that scores a pair
        from its texts alone (a teacher, a cross-encoder). A capability: a ranker that has it
        overrides this, and the default :meth:`score_documents` then goes through it."""
        raise NotImplementedError(f"{type(self).__name__} does not score pairs by their texts; use rerank")

    def score_documents(self, query: str, docs: Documents) -> np.ndarray:
        """Scores of one query's documents, in ``docs`` order (higher ranks first).

        A ranker that overrides this makes it safe to call from many threads at once. This
        default is not (models hold state that calls share: a fast tokenizer refuses concurrent
        calls, a precision is settled once), so the runtime calls it one request at a time: it
        scores the pairs through :meth:`score` where the ranker has it (a pending precision
        settled on the first pairs), else through :meth:`rerank` on a one-query dataset.
        """
        if declares(self, "score"):
            queries, texts = [query] * len(docs), docs.joined()
            self.settle_precision(queries, texts)
            return np.asarray(self.score(queries, texts), dtype=np.float64)
        dataset, run = docs.as_dataset(query)
        scored = run.join(self.rerank(dataset, run).select(DOCID, SCORE), on=DOCID, how="left", maintain_order="left")
        return scored[SCORE].cast(pl.Float64).fill_null(float("nan")).to_numpy()

    def score_requests(self, requests: Sequence[tuple[str, Documents]]) -> list[np.ndarray]:
        """Scores of several queries' documents (``(query, docs)`` each), in one call where the ranker can
        do better than one :meth:`score_documents` each: serving batches concurrent requests through it
        (a bi-encoder embeds every text at once). Thread-safe where the ranker overrides it."""
        return [np.asarray(self.score_documents(query, docs), dtype=np.float64) for query, docs in requests]


# The name type hints across distill use for a ranker.
Ranker = BaseRanker


def declares(ranker: BaseRanker, capability: str) -> bool:
    """Whether ``ranker``'s method ``capability`` is its own (its class's, or one set on it), not
    :class:`BaseRanker`'s default: what callers ask instead of probing for attributes."""
    method = getattr(ranker, capability)
    return getattr(method, "__func__", method) is not getattr(BaseRanker, capability)


def settle_precision(ranker: BaseRanker, dataset: Dataset, run: pl.DataFrame, seed: int = 0) -> None:
    """Let ``ranker`` settle its precision on a seeded sample of :data:`SETTLE_PAIRS` of ``run``'s pairs.

    A model asked for ``auto`` (or bf16/fp16) times and checks its precisions against fp32
    on the pairs it first sees; one query's few pairs say little about speed or fidelity,
    so callers that score query by query settle it here first, on pairs drawn from all
    queries. Rankers without a pending precision ignore it.
    """
    if run.height and declares(ranker, "settle_precision"):  # not the no-op default
        sample = run.sample(min(SETTLE_PAIRS, run.height), seed=seed)
        ranker.settle_precision(dataset.query_texts(sample[QID]), dataset.doc_texts(sample[DOCID]),
                                total_pairs=run.height)

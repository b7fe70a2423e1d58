"""One query's candidate documents as a ranker scores them in process.

:mod:`distill.cascade.runtime` parses a request's documents into :class:`Documents` and hands
them to each stage's :meth:`~distill.rankers.base.BaseRanker.score_documents`. They sit in the
rankers layer because every ranker's ``score_documents`` takes them, and a ranker that has no
faster way scores them through ``rerank`` on the one-query dataset :meth:`Documents.as_dataset`
builds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from distill.core.schema import CORPUS_SCHEMA, DOCID, QID, QRELS_SCHEMA, QUERIES_SCHEMA, TEXT, TITLE
from distill.data.beir import Dataset

QUERY_ID = "q"  # the qid of the one query in Documents.as_dataset


@dataclass(frozen=True)
class Documents:
    """One request's candidates: ids, titles and texts, the given first-stage scores (None:
    the input order) and each one's row in the runtime corpus (-1: a new document)."""

    ids: list[str]
    titles: list[str]
    texts: list[str]
    first_stage: np.ndarray | None
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def chars(self) -> np.ndarray:
        """Each document's length in characters (title and text), what its cost scales with."""
        return np.fromiter((len(t) + len(x) for t, x in zip(self.titles, self.texts)), np.float64, len(self.ids))

    def joined(self) -> list[str]:
        """``"title text"`` per document, as :meth:`distill.data.beir.Dataset.doc_texts` forms it."""
        return [join_title(title, text) for title, text in zip(self.titles, self.texts, strict=True)]

    def take(self, index: np.ndarray) -> Documents:
        """The documents at positions ``index``, in that order."""
        pick = index.tolist()
        return Documents([self.ids[i] for i in pick], [self.titles[i] for i in pick], [self.texts[i] for i in pick],
                         None if self.first_stage is None else self.first_stage[index], self.rows[index])

    def as_dataset(self, query: str) -> tuple[Dataset, pl.DataFrame]:
        """A :class:`Dataset` of ``query`` (qid :data:`QUERY_ID`) and these documents, and the run of
        its candidates in this order: what ``rerank`` takes."""
        corpus = pl.DataFrame({DOCID: self.ids, TITLE: self.titles, TEXT: self.texts}, schema=CORPUS_SCHEMA)
        queries = pl.DataFrame({QID: [QUERY_ID], TEXT: [query]}, schema=QUERIES_SCHEMA)
        run = pl.DataFrame({QID: QUERY_ID, DOCID: self.ids})
        return Dataset(corpus=corpus, queries=queries, qrels=pl.DataFrame(schema=QRELS_SCHEMA)), run


def join_title(title: str, text: str) -> str:
    """A document as one string, exactly as :meth:`distill.data.beir.Dataset.doc_texts` joins it."""
    title, text = title.strip(), text.strip()
    return text if not title else f"{title} {text}".strip()

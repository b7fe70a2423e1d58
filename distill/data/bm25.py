"""First-stage candidates: BM25 top-k per query with bm25s."""

from __future__ import annotations

import logging

import numpy as np
import polars as pl

from distill.core.schema import DOCID, QID, SCORE, TEXT, with_ranks
from distill.data.beir import Dataset

log = logging.getLogger(__name__)


def _tokenize(texts: list[str], stemmer):
    import bm25s

    return bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False)


def bm25_run(dataset: Dataset, k: int = 100, *, k1: float = 1.2, b: float = 0.75,
             add_positives: bool = False) -> pl.DataFrame:
    """Retrieve the BM25 top ``k`` of the corpus for every query of ``dataset``.

    With ``add_positives``, judged-relevant documents BM25 missed are appended to their
    query's list (below its last BM25 score), as training lists need a positive.
    """
    import bm25s
    import Stemmer

    stemmer = Stemmer.Stemmer("english")
    docids = dataset.corpus[DOCID].to_list()
    retriever = bm25s.BM25(k1=k1, b=b)
    retriever.index(_tokenize(dataset.doc_texts(docids), stemmer), show_progress=False)
    k_eff = min(k, len(docids))
    log.info("BM25: %d queries x top-%d over %d documents", dataset.queries.height, k_eff, len(docids))
    query_tokens = _tokenize(dataset.queries[TEXT].to_list(), stemmer)
    # numpy top-k, not bm25s' "auto": where JAX is installed, "auto" picks it, and JAX takes 75% of a
    # GPU's memory when it starts, away from the models in this process (seen on an H100 machine)
    results, scores = retriever.retrieve(query_tokens, k=k_eff, show_progress=False, n_threads=1,
                                         backend_selection="numpy")
    qids = dataset.queries[QID].to_list()
    run = pl.DataFrame({
        QID: np.repeat(np.asarray(qids, dtype=object), k_eff).tolist(),
        DOCID: np.asarray(docids, dtype=object)[results.reshape(-1)].tolist(),
        SCORE: scores.reshape(-1).astype(np.float64),
    })
    # bm25s pads lists with zero scores when fewer than k documents match: keep those, they are real candidates
    if add_positives:
        run = _add_positives(run, dataset)
    return with_ranks(run)


def _add_positives(run: pl.DataFrame, dataset: Dataset) -> pl.DataFrame:
    positives = dataset.qrels.filter(pl.col("relevance") > 0).select(QID, DOCID)
    missing = positives.join(run, on=[QID, DOCID], how="anti")
    if missing.height == 0:
        return run
    floor = run.group_by(QID).agg((pl.col(SCORE).min() - 1.0).alias(SCORE))
    added = missing.join(floor, on=QID, how="left").with_columns(pl.col(SCORE).fill_null(0.0))
    log.info("added %d judged positives BM25 missed", added.height)
    return pl.concat([run, added.select(run.columns)])

"""Lexical learning-to-rank features for whole candidate lists (the LightGBM student's input).

:meth:`FeatureExtractor.fit` indexes the corpus once (:mod:`students.corpus_index`: a positional
forward index with document frequencies, lengths and norms, analysed by
:func:`students.analysis.analyze` as :func:`distill.data.bm25.bm25_run` analyses text).
:meth:`FeatureExtractor.transform` computes the features of every (qid, docid) row of a run in
vectorized batches (:mod:`students.feature_matrix`). There is no Python loop over documents (only
over the run's queries, to analyse them), and a row's features depend on its own query and
document only (plus ``first_stage_rank``, which is its rank in its query's list).
``scripts/bench_features.py`` measures throughput.

Features (``FeatureExtractor.feature_names``):

- ``bm25_title``, ``bm25_body``, ``bm25_doc``: BM25 (Lucene variant, as bm25s) with each
  field's own document frequencies and average length; ``bm25_doc`` scores ``title text``
  and equals the first-stage BM25 score of :func:`distill.data.bm25.bm25_run`.
- ``tfidf_cosine``: cosine of ``tf * idf`` vectors (smoothed idf ``ln((N+1)/(df+1)) + 1``).
- ``coverage_title``, ``coverage_body``, ``coverage``: fraction of the query's distinct terms
  found in the title, the body, the document.
- ``idf_sum``, ``idf_max``: sum and maximum BM25 idf of the matched distinct terms.
- ``query_length``, ``title_length``, ``body_length``: tokens after analysis.
- ``longest_ngram``: longest run of consecutive document tokens that are consecutive query
  tokens; ``longest_ngram_fraction`` divides it by the query length and ``phrase_match`` is 1
  when the whole (analysed) query occurs as a phrase.
- ``bigram_matches``: occurrences of query bigrams in the document; ``bigram_coverage``: the
  fraction of the query's bigrams that occur.
- ``min_cover``: length in positions of the shortest window holding every matched query term
  (Tao & Zhai, SIGIR 2007, "MinCover"); NaN when no term matches (LightGBM's missing value).
- ``first_stage_score``, ``first_stage_rank``: the run's ``score`` and ``rank`` (the rank is
  recomputed from the scores when the run has none), with ``FeatureConfig.first_stage``.
  Documents sent without first-stage scores (:meth:`FeatureExtractor.features`: a rerank request
  carrying only texts, as Cohere's and TEI's APIs send them) take ``bm25_doc`` as their
  first-stage score and its rank among them ("min" ranks, as for a run) as their first-stage
  rank: the first stage the student was trained behind is BM25 (:func:`distill.data.bm25.bm25_run`,
  whose score ``bm25_doc`` equals), so these are the values it would have given them.

A term repeated in the query counts once for coverage and is placed at its first query
position for the n-gram features, so ``a b a c`` matched by ``b a c`` counts as the 2-gram
``b a``: rare in real queries, and it keeps the positional features one vectorized pass.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl

from distill.core.errors import InputError
from distill.core.io import read_json, write_json_atomic
from distill.core.schema import DOCID, QID, RANK, SCORE, require_columns
from distill.data.beir import Dataset
from students.analysis import analyze
from students.corpus_index import CorpusIndex, QueryTerms
from students.feature_matrix import first_stage_features, lexical_features

log = logging.getLogger(__name__)

LEXICAL_FEATURES = (
    "bm25_title", "bm25_body", "bm25_doc", "tfidf_cosine",
    "coverage_title", "coverage_body", "coverage", "idf_sum", "idf_max",
    "query_length", "title_length", "body_length",
    "longest_ngram", "longest_ngram_fraction", "phrase_match",
    "bigram_matches", "bigram_coverage", "min_cover",
)
FIRST_STAGE_FEATURES = ("first_stage_score", "first_stage_rank")

_STATE_FILE = "features.json"
_FORMAT = 1


@dataclass
class FeatureConfig:
    """Settings of the feature extractor; saved with it."""

    k1: float = 1.2
    b: float = 0.75
    first_stage: bool = True  # add first_stage_score/rank: the runs to transform must then carry 'score'
    batch_size: int = 8192  # rows per vectorized batch; bounds memory, does not change values


class FeatureExtractor:
    """Lexical features of (query, document) rows; :meth:`fit` once per corpus, then :meth:`transform` runs."""

    def __init__(self, config: FeatureConfig | None = None) -> None:
        self.config = config or FeatureConfig()
        self._index: CorpusIndex | None = None

    @property
    def feature_names(self) -> list[str]:
        return list(LEXICAL_FEATURES) + (list(FIRST_STAGE_FEATURES) if self.config.first_stage else [])

    @property
    def corpus_hash(self) -> str | None:
        """Fingerprint of the corpus the statistics come from (None before :meth:`fit`)."""
        return None if self._index is None else self._index.corpus_hash

    def fit(self, dataset: Dataset) -> FeatureExtractor:
        """Index ``dataset.corpus``: terms, positions, document frequencies and lengths."""
        self._index = CorpusIndex.build(dataset.corpus)
        log.info("feature index: %d documents, %d terms", len(self._index.docids), len(self._index.vocab))
        return self

    def transform(self, dataset: Dataset, run: pl.DataFrame) -> np.ndarray:
        """Features ``float32 [run.height, len(feature_names)]``, row ``i`` for ``run``'s row ``i``.

        ``dataset`` supplies the query texts; documents come from the fitted corpus.
        """
        index = self._require_index()
        require_columns(run, [QID, DOCID], "run")
        self._require_first_stage(run)
        docs = run.select(DOCID).join(index.docid_frame, on=DOCID, how="left", maintain_order="left")["_doc"]
        if docs.null_count():
            missing = run.filter(docs.is_null())[DOCID]
            raise _not_in_corpus(missing[0], missing.n_unique())
        qids = run[QID].unique(maintain_order=True)
        texts = dataset.query_texts(qids)
        if None in texts:
            first = qids[texts.index(None)]
            raise InputError(f"query {first!r} of the run is not in dataset {dataset.name!r}", field=QID)
        q_frame = pl.DataFrame({QID: qids, "_q": np.arange(len(qids), dtype=np.int64)})
        query_index = run.select(QID).join(q_frame, on=QID, how="left", maintain_order="left")["_q"].to_numpy()
        queries = QueryTerms.build(index.stats, analyze(texts))
        doc_index = docs.to_numpy()
        out = np.empty((run.height, len(self.feature_names)), dtype=np.float32)
        step = max(1, self.config.batch_size)
        for start in range(0, run.height, step):
            stop = min(start + step, run.height)
            out[start:stop, : len(LEXICAL_FEATURES)] = self._lexical(
                index, queries, doc_index[start:stop], query_index[start:stop]
            )
        if self.config.first_stage:
            out[:, len(LEXICAL_FEATURES):] = first_stage_features(run)
        return out

    def transform_query(self, query: str, run: pl.DataFrame) -> np.ndarray:
        """What :meth:`transform` computes for ``run`` when it holds one query, whose text is
        ``query``, without transform's joins (the per-query path of a reranker): document rows
        come from a dictionary, the features from :meth:`features`."""
        self._require_first_stage(run)
        docids = run[DOCID].to_list()
        rows = self.rows_of(docids)
        if (rows < 0).any():
            raise _not_in_corpus(docids[int(np.argmin(rows))], len({d for d, r in zip(docids, rows) if r < 0}))
        first_stage = run[SCORE].cast(pl.Float64).to_numpy() if self.config.first_stage else None
        features = self.features(query, rows, first_stage=first_stage)
        if first_stage is not None and RANK in run.columns:  # a run's own ranks, as transform takes them
            features[:, len(self.feature_names) - 1] = run[RANK].cast(pl.Float64).to_numpy()
        return features

    def features(self, query: str, rows: np.ndarray, titles: Sequence[str] = (), texts: Sequence[str] = (),
                 first_stage: np.ndarray | None = None) -> np.ndarray:
        """Features of one query's documents, as :meth:`transform` computes them for a run of
        that query: document ``i`` is row ``rows[i]`` of the fitted corpus (see :meth:`rows_of`)
        or, where that is -1, the document ``(titles[i], texts[i])``, analysed now and scored
        with the corpus's statistics. ``first_stage`` holds the documents' first-stage scores
        (their ranks are counted among these documents); None, with ``FeatureConfig.first_stage``:
        their ``bm25_doc`` (the module docstring's rule for documents without first-stage scores).

        Document-side work for corpus rows was done at :meth:`fit`; this call analyses the
        query once and computes every row's features in one vectorized pass.
        """
        index = self._require_index()
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), len(self.feature_names)), dtype=np.float32)
        tokens = analyze([query])
        known = rows >= 0
        lexical = len(LEXICAL_FEATURES)
        if known.all():
            out[:, :lexical] = self._lexical(index, QueryTerms.build(index.stats, tokens), rows,
                                             np.zeros(len(rows), dtype=np.int64))
        else:
            for part, block, d in ((known, index, rows[known]), (~known, None, None)):
                if not part.any():
                    continue
                if block is None:
                    new = np.flatnonzero(part).tolist()
                    block = index.new_documents([titles[i] for i in new], [texts[i] for i in new])
                    d = np.arange(len(new), dtype=np.int64)
                out[part, :lexical] = self._lexical(block, QueryTerms.build(block.stats, tokens), d,
                                                    np.zeros(len(d), dtype=np.int64))
        if self.config.first_stage:
            bm25_doc = out[:, LEXICAL_FEATURES.index("bm25_doc")]
            scores = np.asarray(bm25_doc if first_stage is None else first_stage, dtype=np.float64)
            # rank "min" by descending score, as first_stage_features ranks a run's rows
            out[:, lexical] = scores
            out[:, lexical + 1] = np.searchsorted(np.sort(-scores), -scores, side="left") + 1
        return out

    def rows_of(self, docids: Sequence[str]) -> np.ndarray:
        """The fitted corpus's row of each document id, -1 for ids it lacks."""
        row_of = self._require_index().row_of
        return np.fromiter((row_of.get(d, -1) for d in docids), dtype=np.int64, count=len(docids))

    def _lexical(self, index: CorpusIndex, queries: QueryTerms, d: np.ndarray, q: np.ndarray) -> np.ndarray:
        """The lexical features of rows (document ``d[i]``, query ``q[i]``), with this extractor's BM25 parameters."""
        return lexical_features(index, queries, d, q, self.config.k1, self.config.b)

    def _require_index(self) -> CorpusIndex:
        if self._index is None:
            raise InputError("the feature extractor is not fitted: call fit(dataset) or load(folder) first")
        return self._index

    def _require_first_stage(self, run: pl.DataFrame) -> None:
        """Raise :class:`InputError` when the features need first-stage scores and ``run`` has none."""
        if self.config.first_stage and SCORE not in run.columns:
            raise InputError(
                f"the features include the first-stage score, but the run has no '{SCORE}' column "
                f"(columns: {run.columns})", field=SCORE,
            )

    def get_config_dict(self) -> dict:
        return {**asdict(self.config), "feature_names": self.feature_names}

    def save(self, folder: str | Path) -> None:
        """Write the statistics (``features.json`` + NumPy ``.npz`` + Parquet, no pickle) into ``folder``."""
        index = self._require_index()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        index.save(folder)
        write_json_atomic(folder / _STATE_FILE, {
            "format": _FORMAT, "config": asdict(self.config), "feature_names": self.feature_names,
            "n_documents": len(index.docids), "n_terms": len(index.vocab), "corpus_hash": index.corpus_hash,
        })

    @classmethod
    def load(cls, folder: str | Path) -> FeatureExtractor:
        """A fitted extractor from a folder written by :meth:`save`."""
        path = Path(folder) / _STATE_FILE
        if not path.is_file():
            raise InputError("feature extractor state not found", path=path)
        state = read_json(path)
        if state.get("format") != _FORMAT:
            raise InputError(f"unsupported feature format {state.get('format')!r} (expected {_FORMAT})", path=path)
        extractor = cls(FeatureConfig(**state["config"]))
        extractor._index = CorpusIndex.load(Path(folder), state["corpus_hash"])
        return extractor


def _not_in_corpus(docid: str, n_missing: int) -> InputError:
    """The error for a run's document that the fitted corpus lacks (``n_missing`` such documents in all)."""
    return InputError(
        f"document {docid!r} ({n_missing} in all) is not in the corpus the features were fitted on; "
        "fit (or prepare) on this dataset", field=DOCID,
    )

"""Lexical learning-to-rank features for whole candidate lists (the LightGBM student's input).

:meth:`FeatureExtractor.fit` indexes the corpus once: bm25s' tokenizer (lower-case, English
stopwords, PyStemmer's English stemmer, the same analysis as :func:`distill.data.bm25.bm25_run`)
turns each document into the sequence ``title tokens, separator, body tokens``, stored as a
positional forward index in CSR layout: per document its distinct terms (``indptr``,
``terms``), and per (document, term) entry its sorted positions. Document frequencies,
lengths and norms are derived from it. The layout is plain NumPy arrays rather than a
``scipy.sparse`` matrix because every entry also points to its positions, and the lookup
below needs entry numbers, which scipy's indexing does not return.

:meth:`FeatureExtractor.transform` computes the features of every (qid, docid) row of a run
with NumPy over flat arrays: each row's query terms are looked up among its document's
terms with one ``searchsorted`` on the sorted ``document * V + term`` keys; the matched
entries and their positions are reduced per row with ``bincount`` and ``ufunc.reduceat``.
There is no Python loop over documents (only over the run's queries, to analyse them), and
a row's features depend on its own query and document only (plus ``first_stage_rank``,
which is its rank in its query's list). ``scripts/bench_features.py`` measures throughput.

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

A term repeated in the query counts once for coverage and is placed at its first query
position for the n-gram features, so ``a b a c`` matched by ``b a c`` counts as the 2-gram
``b a``: rare in real queries, and it keeps the positional features one vectorized pass.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
from collections import ChainMap
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl

from distill.core.errors import InputError
from distill.core.io import atomic_path, write_json_atomic
from distill.core.manifest import frame_hash
from distill.core.schema import DOCID, QID, RANK, SCORE, TEXT, TITLE, require_columns
from distill.data.beir import Dataset

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
_ARRAYS_FILE = "corpus_index.npz"
_DOCIDS_FILE = "corpus_docids.parquet"
_VOCAB_FILE = "corpus_vocab.parquet"
_FORMAT = 1
_SPLIT = re.compile(r"(?u)\b\w\w+\b").findall  # bm25s' (and scikit-learn's) token pattern
_THREAD = threading.local()


@dataclass
class FeatureConfig:
    """Settings of the feature extractor; saved with it."""

    k1: float = 1.2
    b: float = 0.75
    first_stage: bool = True  # add first_stage_score/rank: the runs to transform must then carry 'score'
    batch_size: int = 8192  # rows per vectorized batch; bounds memory, does not change values


def analyze(texts: Sequence[str]) -> list[list[str]]:
    """Tokens as ``bm25s.tokenize(texts, stopwords="en", stemmer=Stemmer("english"))`` makes them
    (lower-cased words of 2+ characters, no English stopwords, stemmed), the analysis of
    :func:`distill.data.bm25.bm25_run`. Written out because bm25s rebuilds its stopword set for
    every text and maps tokens through vocabularies, which costs more than the analysis of a
    query itself; ``tests/test_features.py`` checks the two agree."""
    stem, stopwords = _stemmer().stemWords, _english_stopwords()
    out = []
    for text in texts:
        words = [w for w in _SPLIT(text.lower()) if w not in stopwords]
        out.append(stem(words) if words else [])
    return out


def _stemmer():
    """This thread's English stemmer (PyStemmer's stemmers must not be shared between threads)."""
    stemmer = getattr(_THREAD, "stemmer", None)
    if stemmer is None:
        import Stemmer

        stemmer = _THREAD.stemmer = Stemmer.Stemmer("english")
    return stemmer


@functools.cache
def _english_stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


def _ragged(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the slices ``[starts[i], starts[i] + lengths[i])`` one after another, and
    for each the slice ``i`` it came from: a gather of many variable-length slices in two NumPy calls."""
    # array methods rather than np.repeat/np.cumsum: this runs several times per query, where
    # the functions' Python wrappers cost as much as the work
    lengths = lengths.astype(np.int64, copy=False)
    owner = np.arange(len(lengths)).repeat(lengths)
    ends = lengths.cumsum()
    flat = np.arange(int(ends[-1]) if len(ends) else 0, dtype=np.int64) + (starts - (ends - lengths)).repeat(lengths)
    return flat, owner


def _run_starts(values: np.ndarray) -> np.ndarray:
    """Where each run of equal values starts (``values`` non-empty)."""
    change = np.empty(len(values), dtype=bool)
    change[0] = True
    np.not_equal(values[1:], values[:-1], out=change[1:])
    return change.nonzero()[0]


@dataclass
class _Statistics:
    """What scoring needs from a corpus besides its documents: term ids, document frequencies
    (as idf arrays, by field) and average lengths. New documents are scored with these."""

    term_ids: Mapping[str, int]
    n_terms: int
    idf: dict[str, np.ndarray]  # BM25 idf by field ("title", "body", "doc"), by term id
    avg_len: dict[str, float]
    tfidf_idf: np.ndarray  # smoothed idf of tfidf_cosine, by term id
    unknown_tfidf_idf: float  # ... of a term the corpus lacks
    n_docs: int

    @classmethod
    def of(cls, index: _CorpusIndex) -> _Statistics:
        n_docs, n_terms = len(index.docids), len(index.vocab)
        doc_of_entry = np.repeat(np.arange(n_docs), np.diff(index.indptr))
        # positions are sorted per entry: the first one says whether the term is in the title, the last the body
        in_title = index.positions[index.pos_ptr[:-1]] < index.title_len[doc_of_entry]
        in_body = index.positions[index.pos_ptr[1:] - 1] > index.title_len[doc_of_entry]
        doc_len = index.title_len + index.body_len.astype(np.float64)
        return cls(
            term_ids={term: i for i, term in enumerate(index.vocab)}, n_terms=n_terms,
            idf={name: _bm25_idf(np.bincount(index.terms[mask], minlength=n_terms), n_docs)
                 for name, mask in (("title", in_title), ("body", in_body), ("doc", slice(None)))},
            avg_len={"title": max(index.title_len.mean(), 1e-9), "body": max(index.body_len.mean(), 1e-9),
                     "doc": max(doc_len.mean(), 1e-9)},
            tfidf_idf=np.log((n_docs + 1) / (np.bincount(index.terms, minlength=n_terms) + 1)) + 1,
            unknown_tfidf_idf=float(np.log(n_docs + 1) + 1), n_docs=n_docs,
        )

    def with_new_terms(self, terms: Mapping[str, int]) -> _Statistics:
        """These statistics with ``terms`` (ids ``n_terms``, ``n_terms + 1``, ...) added as terms
        no corpus document holds (document frequency 0)."""
        if not terms:
            return self
        extra = len(terms)
        unseen = _bm25_idf(np.zeros(1), self.n_docs)[0]
        return replace(
            self, term_ids=ChainMap(dict(terms), self.term_ids), n_terms=self.n_terms + extra,
            idf={name: np.concatenate([idf, np.full(extra, unseen)]) for name, idf in self.idf.items()},
            tfidf_idf=np.concatenate([self.tfidf_idf, np.full(extra, self.unknown_tfidf_idf)]),
        )


def _forward_index(ids: np.ndarray, title_len: np.ndarray, body_len: np.ndarray) -> dict[str, np.ndarray]:
    """The positional forward index (``indptr, terms, pos_ptr, positions``) of documents whose
    tokens' term ids are ``ids``, one document after another, each title then body."""
    n_tokens = title_len.astype(np.int64) + body_len
    within, doc = _ragged(np.zeros(len(n_tokens), dtype=np.int64), n_tokens)  # index in its document
    position = within + (within >= title_len[doc])  # body tokens come after the separator
    order = np.lexsort((position, ids, doc))
    doc, ids, position = doc[order], ids[order], position[order].astype(np.int32)
    new_entry = np.ones(len(ids), dtype=bool)
    new_entry[1:] = (doc[1:] != doc[:-1]) | (ids[1:] != ids[:-1])
    starts = np.flatnonzero(new_entry)
    indptr = np.zeros(len(n_tokens) + 1, dtype=np.int64)
    np.cumsum(np.bincount(doc[starts], minlength=len(n_tokens)), out=indptr[1:])
    return {"indptr": indptr, "terms": ids[starts], "pos_ptr": np.append(starts, len(ids)).astype(np.int64),
            "positions": position}


def _lengths(tokens: list[list[str]]) -> np.ndarray:
    return np.fromiter((len(t) for t in tokens), dtype=np.int32, count=len(tokens))


@dataclass
class _CorpusIndex:
    """The positional forward index of a corpus, with its :class:`_Statistics` (its own, or
    for new documents the statistics of the corpus they are scored against)."""

    docids: list[str]
    vocab: list[str]
    indptr: np.ndarray  # int64 [n_docs + 1]: entries of document d are indptr[d]:indptr[d+1]
    terms: np.ndarray  # int32 [n_entries]: term id of each (document, term) entry, sorted per document
    pos_ptr: np.ndarray  # int64 [n_entries + 1]: positions of entry e are positions[pos_ptr[e]:pos_ptr[e+1]]
    positions: np.ndarray  # int32: token positions in "title tokens, separator, body tokens"
    title_len: np.ndarray  # int32 [n_docs]
    body_len: np.ndarray  # int32 [n_docs]
    corpus_hash: str
    stats: _Statistics | None = None

    def __post_init__(self) -> None:
        if self.stats is None:
            self.stats = _Statistics.of(self)
        n_docs = len(self.title_len)
        tf = np.diff(self.pos_ptr)
        doc_of_entry = np.repeat(np.arange(n_docs), np.diff(self.indptr))
        self.doc_len = (self.title_len + self.body_len).astype(np.float64)
        weights = (tf * self.stats.tfidf_idf[self.terms]) ** 2
        self.doc_norm = np.sqrt(np.bincount(doc_of_entry, weights=weights, minlength=n_docs))
        self.docid_frame = pl.DataFrame({DOCID: self.docids, "_doc": np.arange(len(self.docids), dtype=np.int64)})
        self.row_of = {docid: row for row, docid in enumerate(self.docids)}

    @classmethod
    def build(cls, corpus: pl.DataFrame) -> _CorpusIndex:
        titles = analyze(corpus[TITLE].fill_null("").to_list())
        bodies = analyze(corpus[TEXT].fill_null("").to_list())
        vocab: dict[str, int] = {}
        # one vocabulary pass in Python over the tokens (fit time only); the rest is NumPy
        ids = np.fromiter(
            (vocab.setdefault(tok, len(vocab)) for title, body in zip(titles, bodies, strict=True)
             for tok in (*title, *body)),
            dtype=np.int32,
        )
        title_len, body_len = _lengths(titles), _lengths(bodies)
        return cls(docids=corpus[DOCID].to_list(), vocab=list(vocab), title_len=title_len, body_len=body_len,
                   corpus_hash=frame_hash(corpus), **_forward_index(ids, title_len, body_len))

    def new_documents(self, titles: Sequence[str], texts: Sequence[str]) -> _CorpusIndex:
        """Documents outside the corpus, indexed now and scored with this corpus's statistics
        (terms it lacks get document frequency 0)."""
        title_tokens, body_tokens = analyze(titles), analyze(texts)
        known, new = self.stats.term_ids, {}
        first_new = self.stats.n_terms
        ids = np.fromiter(
            (known[tok] if tok in known else new.setdefault(tok, first_new + len(new))
             for title, body in zip(title_tokens, body_tokens, strict=True) for tok in (*title, *body)),
            dtype=np.int32,
        )
        title_len, body_len = _lengths(title_tokens), _lengths(body_tokens)
        return _CorpusIndex(docids=[], vocab=[], title_len=title_len, body_len=body_len, corpus_hash="",
                            stats=self.stats.with_new_terms(new), **_forward_index(ids, title_len, body_len))

    def save(self, folder: Path) -> None:
        with atomic_path(folder / _ARRAYS_FILE) as tmp, tmp.open("wb") as handle:
            np.savez(handle, indptr=self.indptr, terms=self.terms, pos_ptr=self.pos_ptr,
                     positions=self.positions, title_len=self.title_len, body_len=self.body_len)
        for name, column, values in ((_DOCIDS_FILE, DOCID, self.docids), (_VOCAB_FILE, "term", self.vocab)):
            with atomic_path(folder / name) as tmp:
                pl.DataFrame({column: pl.Series(values, dtype=pl.String)}).write_parquet(tmp)

    @classmethod
    def load(cls, folder: Path, corpus_hash: str) -> _CorpusIndex:
        for name in (_ARRAYS_FILE, _DOCIDS_FILE, _VOCAB_FILE):
            if not (folder / name).is_file():
                raise InputError("feature extractor file missing", path=folder / name)
        with np.load(folder / _ARRAYS_FILE, allow_pickle=False) as arrays:
            loaded = {name: arrays[name] for name in arrays.files}
        return cls(
            docids=pl.read_parquet(folder / _DOCIDS_FILE)[DOCID].to_list(),
            vocab=pl.read_parquet(folder / _VOCAB_FILE)["term"].to_list(),
            corpus_hash=corpus_hash, **loaded,
        )


def _bm25_idf(df: np.ndarray, n_docs: int) -> np.ndarray:
    """Lucene's BM25 idf, as bm25s computes it: ``ln(1 + (N - df + 0.5) / (df + 0.5))``."""
    return np.log1p((n_docs - df + 0.5) / (df + 0.5))


@dataclass
class _QueryTerms:
    """The analysed queries of one run: sizes, and each query's distinct known terms as CSR slices."""

    length: np.ndarray  # tokens per query
    n_distinct: np.ndarray  # distinct tokens per query (terms unknown to the corpus included)
    norm: np.ndarray  # tf-idf norm of the query vector
    ptr: np.ndarray  # int64 [n_queries + 1]: query q's terms are term[ptr[q]:ptr[q+1]]
    term: np.ndarray  # int64 term ids
    qtf: np.ndarray  # the term's frequency in the query
    first_pos: np.ndarray  # the term's position in the query (its first occurrence)

    @classmethod
    def build(cls, stats: _Statistics, tokens: list[list[str]]) -> _QueryTerms:
        terms, qtf, first_pos, norms, ptr = [], [], [], [], [0]
        for query in tokens:  # per query, never per document
            counts: dict[str, list[int]] = {}
            for j, token in enumerate(query):
                counts.setdefault(token, [j, 0])[1] += 1
            sq_norm = 0.0
            for token, (j, count) in counts.items():
                term = stats.term_ids.get(token)
                idf = stats.unknown_tfidf_idf if term is None else stats.tfidf_idf[term]
                sq_norm += (count * idf) ** 2
                if term is not None:
                    terms.append(term)
                    qtf.append(count)
                    first_pos.append(j)
            norms.append(np.sqrt(sq_norm))
            ptr.append(len(terms))
        return cls(
            length=np.array([len(t) for t in tokens], dtype=np.float64),
            n_distinct=np.array([len(set(t)) for t in tokens], dtype=np.float64),
            norm=np.asarray(norms, dtype=np.float64), ptr=np.asarray(ptr, dtype=np.int64),
            term=np.asarray(terms, dtype=np.int64), qtf=np.asarray(qtf, dtype=np.float64),
            first_pos=np.asarray(first_pos, dtype=np.int64),
        )


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den``, 0 where ``den`` is 0."""
    return np.divide(num, den, out=np.zeros(len(num)), where=den > 0)


class FeatureExtractor:
    """Lexical features of (query, document) rows; :meth:`fit` once per corpus, then :meth:`transform` runs."""

    def __init__(self, config: FeatureConfig | None = None) -> None:
        self.config = config or FeatureConfig()
        self._index: _CorpusIndex | None = None

    @property
    def feature_names(self) -> list[str]:
        return list(LEXICAL_FEATURES) + (list(FIRST_STAGE_FEATURES) if self.config.first_stage else [])

    @property
    def corpus_hash(self) -> str | None:
        """Fingerprint of the corpus the statistics come from (None before :meth:`fit`)."""
        return None if self._index is None else self._index.corpus_hash

    def fit(self, dataset: Dataset) -> FeatureExtractor:
        """Index ``dataset.corpus``: terms, positions, document frequencies and lengths."""
        self._index = _CorpusIndex.build(dataset.corpus)
        log.info("feature index: %d documents, %d terms", len(self._index.docids), len(self._index.vocab))
        return self

    def transform(self, dataset: Dataset, run: pl.DataFrame) -> np.ndarray:
        """Features ``float32 [run.height, len(feature_names)]``, row ``i`` for ``run``'s row ``i``.

        ``dataset`` supplies the query texts; documents come from the fitted corpus.
        """
        index = self._require_index()
        require_columns(run, [QID, DOCID], "run")
        if self.config.first_stage and SCORE not in run.columns:
            raise InputError(
                f"the features include the first-stage score, but the run has no '{SCORE}' column "
                f"(columns: {run.columns})", field=SCORE,
            )
        docs = run.select(DOCID).join(index.docid_frame, on=DOCID, how="left", maintain_order="left")["_doc"]
        if docs.null_count():
            missing = run.filter(docs.is_null())[DOCID]
            raise InputError(
                f"document {missing[0]!r} ({missing.n_unique()} in all) is not in the corpus the features "
                "were fitted on; fit (or prepare) on this dataset", field=DOCID,
            )
        qids = run[QID].unique(maintain_order=True)
        texts = dataset.query_texts(qids)
        if None in texts:
            first = qids[texts.index(None)]
            raise InputError(f"query {first!r} of the run is not in dataset {dataset.name!r}", field=QID)
        q_frame = pl.DataFrame({QID: qids, "_q": np.arange(len(qids), dtype=np.int64)})
        query_index = run.select(QID).join(q_frame, on=QID, how="left", maintain_order="left")["_q"].to_numpy()
        queries = _QueryTerms.build(index.stats, analyze(texts))
        doc_index = docs.to_numpy()
        out = np.empty((run.height, len(self.feature_names)), dtype=np.float32)
        step = max(1, self.config.batch_size)
        for start in range(0, run.height, step):
            stop = min(start + step, run.height)
            out[start:stop, : len(LEXICAL_FEATURES)] = self._lexical(
                index, queries, doc_index[start:stop], query_index[start:stop]
            )
        if self.config.first_stage:
            out[:, len(LEXICAL_FEATURES):] = _first_stage(run)
        return out

    def features(self, query: str, rows: np.ndarray, titles: Sequence[str] = (), texts: Sequence[str] = (),
                 first_stage: np.ndarray | None = None) -> np.ndarray:
        """Features of one query's documents, as :meth:`transform` computes them for a run of
        that query: document ``i`` is row ``rows[i]`` of the fitted corpus (see :meth:`rows_of`)
        or, where that is -1, the document ``(titles[i], texts[i])``, analysed now and scored
        with the corpus's statistics. ``first_stage`` holds the documents' first-stage scores
        (needed with ``FeatureConfig.first_stage``; their ranks are counted among these documents).

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
            out[:, :lexical] = self._lexical(index, _QueryTerms.build(index.stats, tokens), rows,
                                             np.zeros(len(rows), dtype=np.int64))
        else:
            for part, block, d in ((known, index, rows[known]), (~known, None, None)):
                if not part.any():
                    continue
                if block is None:
                    new = np.flatnonzero(part).tolist()
                    block = index.new_documents([titles[i] for i in new], [texts[i] for i in new])
                    d = np.arange(len(new), dtype=np.int64)
                out[part, :lexical] = self._lexical(block, _QueryTerms.build(block.stats, tokens), d,
                                                    np.zeros(len(d), dtype=np.int64))
        if self.config.first_stage:
            if first_stage is None:
                raise InputError("the features include the first-stage score: give every document's score",
                                 field=SCORE)
            scores = np.asarray(first_stage, dtype=np.float64)
            # rank "min" by descending score, as _first_stage ranks a run's rows
            out[:, lexical] = scores
            out[:, lexical + 1] = np.searchsorted(np.sort(-scores), -scores, side="left") + 1
        return out

    def rows_of(self, docids: Sequence[str]) -> np.ndarray:
        """The fitted corpus's row of each document id, -1 for ids it lacks."""
        row_of = self._require_index().row_of
        return np.fromiter((row_of.get(d, -1) for d in docids), dtype=np.int64, count=len(docids))

    def _lexical(self, index: _CorpusIndex, queries: _QueryTerms, d: np.ndarray, q: np.ndarray) -> np.ndarray:
        """The lexical features of rows (document ``d[i]``, query ``q[i]``)."""
        stats = index.stats
        n, n_terms = len(d), stats.n_terms
        # each row's query terms, looked up among its document's terms: the rows' (document,
        # term) entries keyed row * V + term are sorted (each document's entries are sorted by
        # term), so one searchsorted finds them all. Searching these few entries rather than the
        # whole corpus's keeps the search in cache: it was half of a query's time.
        slot, row = _ragged(queries.ptr[q], queries.ptr[q + 1] - queries.ptr[q])
        term = queries.term[slot]
        entries, entry_row = _ragged(index.indptr[d], index.indptr[d + 1] - index.indptr[d])
        local_keys = entry_row * n_terms + index.terms[entries]
        key = row * n_terms + term
        found = np.minimum(np.searchsorted(local_keys, key), max(len(local_keys) - 1, 0))
        hit = local_keys[found] == key if len(local_keys) else np.zeros(len(key), dtype=bool)
        entry, row, term, slot = entries[found[hit]], row[hit], term[hit], slot[hit]
        qtf, query_pos, doc = queries.qtf[slot], queries.first_pos[slot], d[row]
        # the matched terms' positions; title positions come before title_len
        pos_index, owner = _ragged(index.pos_ptr[entry], index.pos_ptr[entry + 1] - index.pos_ptr[entry])
        pos = index.positions[pos_index].astype(np.int64)
        tf = (index.pos_ptr[entry + 1] - index.pos_ptr[entry]).astype(np.float64)
        tf_title = np.bincount(owner, weights=pos < index.title_len[doc[owner]], minlength=len(entry))
        tf_body = tf - tf_title

        def bm25(field_tf: np.ndarray, name: str, length: np.ndarray) -> np.ndarray:
            k1, b = self.config.k1, self.config.b
            norm = k1 * (1 - b + b * length[doc] / stats.avg_len[name])
            saturation = np.divide(field_tf, field_tf + norm, out=np.zeros(len(field_tf)), where=field_tf > 0)
            return np.bincount(row, weights=qtf * stats.idf[name][term] * saturation, minlength=n)

        idf_doc = stats.idf["doc"][term]
        idf_max = _segment_reduce(np.maximum, idf_doc, row, n, 0.0)
        dot = np.bincount(row, weights=qtf * tf * stats.tfidf_idf[term] ** 2, minlength=n)
        length = queries.length[q]
        n_distinct = queries.n_distinct[q]
        positional = _positional(row, query_pos, owner, pos, n, length)
        return np.array([  # one column per feature (np.array of rows, transposed: fewer calls than column_stack)
            bm25(tf_title, "title", index.title_len), bm25(tf_body, "body", index.body_len),
            bm25(tf, "doc", index.doc_len), _ratio(dot, queries.norm[q] * index.doc_norm[d]),
            _ratio(np.bincount(row[tf_title > 0], minlength=n), n_distinct),
            _ratio(np.bincount(row[tf_body > 0], minlength=n), n_distinct),
            _ratio(np.bincount(row, minlength=n), n_distinct),
            np.bincount(row, weights=idf_doc, minlength=n), idf_max,
            length, index.title_len[d], index.body_len[d], *positional,
        ], dtype=np.float64).T

    def _require_index(self) -> _CorpusIndex:
        if self._index is None:
            raise InputError("the feature extractor is not fitted: call fit(dataset) or load(folder) first")
        return self._index

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
        state = json.loads(path.read_text(encoding="utf-8"))
        if state.get("format") != _FORMAT:
            raise InputError(f"unsupported feature format {state.get('format')!r} (expected {_FORMAT})", path=path)
        extractor = cls(FeatureConfig(**state["config"]))
        extractor._index = _CorpusIndex.load(Path(folder), state["corpus_hash"])
        return extractor


def _segment_reduce(ufunc: np.ufunc, values: np.ndarray, row: np.ndarray, n: int, fill: float) -> np.ndarray:
    """``ufunc`` over each run of equal ``row`` values (``row`` sorted); ``fill`` for rows absent."""
    out = np.full(n, fill)
    if len(row):
        starts = _run_starts(row)
        out[row[starts]] = ufunc.reduceat(values, starts)
    return out


def _positional(entry_row: np.ndarray, entry_query_pos: np.ndarray, owner: np.ndarray, pos: np.ndarray,
                n: int, length: np.ndarray) -> list[np.ndarray]:
    """``longest_ngram, longest_ngram_fraction, phrase_match, bigram_matches, bigram_coverage, min_cover``.

    Inputs are the matched (row, term) entries, sorted by row then query position, and their
    document positions ``pos`` (entry ``owner[i]``, sorted within each entry).
    """
    stride = int(pos.max(initial=0)) + 2
    row = entry_row[owner]
    order = np.argsort(row * stride + pos, kind="stable")
    row_s, query_pos_s, pos_s = row[order], entry_query_pos[owner][order], pos[order]
    # a match continues an n-gram when it follows the previous match in the document and in the query
    cont = np.zeros(len(row_s), dtype=bool)
    cont[1:] = (row_s[1:] == row_s[:-1]) & (pos_s[1:] == pos_s[:-1] + 1) & (query_pos_s[1:] == query_pos_s[:-1] + 1)
    start = ~cont
    run_length = np.bincount(np.cumsum(start) - 1).astype(np.float64)
    longest = _segment_reduce(np.maximum, run_length, row_s[start], n, 0.0)
    width = int(length.max(initial=0)) + 1
    bigrams = np.sort(row_s[cont] * width + query_pos_s[cont])
    distinct_bigrams = bigrams[_run_starts(bigrams)] // width if len(bigrams) else bigrams
    return [
        longest, _ratio(longest, length), ((longest == length) & (length > 0)).astype(np.float64),
        np.bincount(row_s[cont], minlength=n).astype(np.float64),
        _ratio(np.bincount(distinct_bigrams, minlength=n), np.maximum(length - 1, 0)),
        _min_cover(entry_row, owner, pos, row, n, stride, order),
    ]


def _min_cover(entry_row: np.ndarray, owner: np.ndarray, pos: np.ndarray, row: np.ndarray, n: int,
               stride: int, order: np.ndarray) -> np.ndarray:
    """Shortest window holding every matched term of each row (NaN for rows without a match).

    The best window starts at some match ``i``; it must reach, for every matched term, that
    term's next occurrence at or after ``i``. So: pair every candidate start with each matched
    entry of its row, find the next occurrence by ``searchsorted`` in the sorted ``entry *
    stride + position`` keys, take the farthest per start and the shortest per row.

    A match followed (``order``: matches by row, then position) by another match of the same
    term is no candidate: the window from that next match ends where its own does and starts
    later. Dropping them leaves the minimum as it is and, in long documents where one query
    term recurs, most of the pairs out.
    """
    occurrences = owner * stride + pos  # sorted: entries in order, positions sorted within
    per_row = np.bincount(entry_row, minlength=n)
    first_entry = per_row.cumsum() - per_row
    owner_s, row_s = owner[order], row[order]
    keep = np.ones(len(order), dtype=bool)
    keep[:-1] = (row_s[1:] != row_s[:-1]) | (owner_s[1:] != owner_s[:-1])
    starts = order[keep]  # sorted by row
    start_row, start_pos = row[starts], pos[starts]
    pair_entry, match = _ragged(first_entry[start_row], per_row[start_row])
    target = pair_entry * stride + start_pos[match]
    slot = np.minimum(np.searchsorted(occurrences, target), max(len(occurrences) - 1, 0))
    hit = occurrences[slot] if len(occurrences) else target
    found = (hit >= target) & (hit // stride == pair_entry)
    end = np.where(found, hit % stride, np.iinfo(np.int64).max // 4).astype(np.float64)
    window = _segment_reduce(np.maximum, end, match, len(starts), np.nan) - start_pos + 1
    return _segment_reduce(np.minimum, window, start_row, n, np.nan)


def _first_stage(run: pl.DataFrame) -> np.ndarray:
    """``first_stage_score, first_stage_rank`` of each row; ranks from scores (ties share the best) when absent."""
    rank = pl.col(RANK) if RANK in run.columns else pl.col(SCORE).rank("min", descending=True).over(QID)
    return run.select(pl.col(SCORE).cast(pl.Float64), rank.cast(pl.Float64).alias("_rank")).to_numpy()

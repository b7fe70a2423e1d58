"""The corpus side of the lexical features: a positional forward index and its statistics.

:meth:`CorpusIndex.build` indexes a corpus once: :func:`students.analysis.analyze` turns each
document into the sequence ``title tokens, separator, body tokens``, stored as a positional
forward index in CSR layout: per document its distinct terms (``indptr``, ``terms``), and per
(document, term) entry its sorted positions. Document frequencies, lengths and norms
(:class:`CorpusStatistics`) are derived from it. The layout is plain NumPy arrays rather than a
``scipy.sparse`` matrix because every entry also points to its positions, and the lookup of
:mod:`students.feature_matrix` needs entry numbers, which scipy's indexing does not return.

:class:`QueryTerms` is the query side: a run's analysed queries as term ids of these statistics.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl

from distill.core.errors import InputError
from distill.core.io import atomic_path
from distill.core.manifest import frame_hash
from distill.core.schema import DOCID, TEXT, TITLE
from students.analysis import analyze
from students.ragged import gather_slices

_ARRAYS_FILE = "corpus_index.npz"
_DOCIDS_FILE = "corpus_docids.parquet"
_VOCAB_FILE = "corpus_vocab.parquet"


def _bm25_idf(df: np.ndarray, n_docs: int) -> np.ndarray:
    """Lucene's BM25 idf, as bm25s computes it: ``ln(1 + (N - df + 0.5) / (df + 0.5))``."""
    return np.log1p((n_docs - df + 0.5) / (df + 0.5))


@dataclass
class CorpusStatistics:
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
    def of(cls, index: CorpusIndex, doc_of_entry: np.ndarray) -> CorpusStatistics:
        """The statistics of ``index``'s documents (``doc_of_entry``: the document of each entry)."""
        n_docs, n_terms = len(index.docids), len(index.vocab)
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

    def with_new_terms(self, terms: Mapping[str, int]) -> CorpusStatistics:
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


def _forward_index(ids: np.ndarray, titles: list[list[str]], bodies: list[list[str]]) -> dict[str, np.ndarray]:
    """The positional forward index (``indptr, terms, pos_ptr, positions``) and the field lengths
    (``title_len, body_len``) of the documents ``titles``, ``bodies`` (tokens), whose tokens' term
    ids are ``ids``, one document after another, each title then body."""
    title_len, body_len = _lengths(titles), _lengths(bodies)
    n_tokens = title_len.astype(np.int64) + body_len
    within, doc = gather_slices(np.zeros(len(n_tokens), dtype=np.int64), n_tokens)  # index in its document
    position = within + (within >= title_len[doc])  # body tokens come after the separator
    order = np.lexsort((position, ids, doc))
    doc, ids, position = doc[order], ids[order], position[order].astype(np.int32)
    new_entry = np.ones(len(ids), dtype=bool)
    new_entry[1:] = (doc[1:] != doc[:-1]) | (ids[1:] != ids[:-1])
    starts = np.flatnonzero(new_entry)
    indptr = np.zeros(len(n_tokens) + 1, dtype=np.int64)
    np.cumsum(np.bincount(doc[starts], minlength=len(n_tokens)), out=indptr[1:])
    return {"indptr": indptr, "terms": ids[starts], "pos_ptr": np.append(starts, len(ids)).astype(np.int64),
            "positions": position, "title_len": title_len, "body_len": body_len}


def _lengths(tokens: list[list[str]]) -> np.ndarray:
    return np.fromiter((len(t) for t in tokens), dtype=np.int32, count=len(tokens))


@dataclass
class CorpusIndex:
    """The positional forward index of a corpus, with its :class:`CorpusStatistics` (its own, or
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
    stats: CorpusStatistics | None = None

    def __post_init__(self) -> None:
        n_docs = len(self.title_len)
        doc_of_entry = np.repeat(np.arange(n_docs), np.diff(self.indptr))
        if self.stats is None:
            self.stats = CorpusStatistics.of(self, doc_of_entry)
        tf = np.diff(self.pos_ptr)
        self.doc_len = (self.title_len + self.body_len).astype(np.float64)
        weights = (tf * self.stats.tfidf_idf[self.terms]) ** 2
        self.doc_norm = np.sqrt(np.bincount(doc_of_entry, weights=weights, minlength=n_docs))
        self.docid_frame = pl.DataFrame({DOCID: self.docids, "_doc": np.arange(len(self.docids), dtype=np.int64)})
        self.row_of = {docid: row for row, docid in enumerate(self.docids)}

    @classmethod
    def build(cls, corpus: pl.DataFrame) -> CorpusIndex:
        """The index of ``corpus`` (``docid, title, text``), with its own statistics."""
        titles = analyze(corpus[TITLE].fill_null("").to_list())
        bodies = analyze(corpus[TEXT].fill_null("").to_list())
        vocab: dict[str, int] = {}
        # one vocabulary pass in Python over the tokens (fit time only); the rest is NumPy
        ids = np.fromiter(
            (vocab.setdefault(tok, len(vocab)) for title, body in zip(titles, bodies, strict=True)
             for tok in (*title, *body)),
            dtype=np.int32,
        )
        return cls(docids=corpus[DOCID].to_list(), vocab=list(vocab), corpus_hash=frame_hash(corpus),
                   **_forward_index(ids, titles, bodies))

    def new_documents(self, titles: Sequence[str], texts: Sequence[str]) -> CorpusIndex:
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
        return CorpusIndex(docids=[], vocab=[], corpus_hash="", stats=self.stats.with_new_terms(new),
                           **_forward_index(ids, title_tokens, body_tokens))

    def save(self, folder: Path) -> None:
        """Write the index into ``folder``: its arrays as NumPy ``.npz``, document ids and vocabulary as Parquet."""
        with atomic_path(folder / _ARRAYS_FILE) as tmp, tmp.open("wb") as handle:
            np.savez(handle, indptr=self.indptr, terms=self.terms, pos_ptr=self.pos_ptr,
                     positions=self.positions, title_len=self.title_len, body_len=self.body_len)
        for name, column, values in ((_DOCIDS_FILE, DOCID, self.docids), (_VOCAB_FILE, "term", self.vocab)):
            with atomic_path(folder / name) as tmp:
                pl.DataFrame({column: pl.Series(values, dtype=pl.String)}).write_parquet(tmp)

    @classmethod
    def load(cls, folder: Path, corpus_hash: str) -> CorpusIndex:
        """The index :meth:`save` wrote into ``folder`` (its statistics recomputed)."""
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


@dataclass
class QueryTerms:
    """The analysed queries of one run: sizes, and each query's distinct known terms as CSR slices."""

    length: np.ndarray  # tokens per query
    n_distinct: np.ndarray  # distinct tokens per query (terms unknown to the corpus included)
    norm: np.ndarray  # tf-idf norm of the query vector
    ptr: np.ndarray  # int64 [n_queries + 1]: query q's terms are term[ptr[q]:ptr[q+1]]
    term: np.ndarray  # int64 term ids
    qtf: np.ndarray  # the term's frequency in the query
    first_pos: np.ndarray  # the term's position in the query (its first occurrence)

    @classmethod
    def build(cls, stats: CorpusStatistics, tokens: list[list[str]]) -> QueryTerms:
        """The queries ``tokens`` (analysed) as term ids of ``stats``; terms it lacks count in the
        sizes and the norm only."""
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

"""The feature matrix: the lexical features of many (query, document) rows in one vectorized pass.

:func:`lexical_features` computes the columns of :data:`students.features.LEXICAL_FEATURES`
with NumPy over flat arrays: each row's query terms (:class:`~students.corpus_index.QueryTerms`)
are looked up among its document's terms (:class:`~students.corpus_index.CorpusIndex`) with one
``searchsorted`` on the sorted ``document * V + term`` keys; the matched entries and their
positions are reduced per row with ``bincount`` and ``ufunc.reduceat``. There is no Python loop
over documents, and a row's features depend on its own query and document only.
:func:`first_stage_features` adds a run's own scores and ranks.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from distill.core.schema import QID, RANK, SCORE
from students.corpus_index import CorpusIndex, QueryTerms
from students.ragged import gather_slices, run_starts, segment_reduce


def lexical_features(index: CorpusIndex, queries: QueryTerms, d: np.ndarray, q: np.ndarray,
                     k1: float, b: float) -> np.ndarray:
    """The lexical features ``float64 [len(d), len(LEXICAL_FEATURES)]`` of rows (document ``d[i]``
    of ``index``, query ``q[i]`` of ``queries``), BM25 with parameters ``k1``, ``b``."""
    stats = index.stats
    n, n_terms = len(d), stats.n_terms
    # each row's query terms, looked up among its document's terms: the rows' (document,
    # term) entries keyed row * V + term are sorted (each document's entries are sorted by
    # term), so one searchsorted finds them all. Searching these few entries rather than the
    # whole corpus's keeps the search in cache: it was half of a query's time.
    slot, row = gather_slices(queries.ptr[q], queries.ptr[q + 1] - queries.ptr[q])
    term = queries.term[slot]
    entries, entry_row = gather_slices(index.indptr[d], index.indptr[d + 1] - index.indptr[d])
    local_keys = entry_row * n_terms + index.terms[entries]
    key = row * n_terms + term
    found = np.minimum(np.searchsorted(local_keys, key), max(len(local_keys) - 1, 0))
    hit = local_keys[found] == key if len(local_keys) else np.zeros(len(key), dtype=bool)
    entry, row, term, slot = entries[found[hit]], row[hit], term[hit], slot[hit]
    qtf, query_pos, doc = queries.qtf[slot], queries.first_pos[slot], d[row]
    # the matched terms' positions; title positions come before title_len
    pos_index, owner = gather_slices(index.pos_ptr[entry], index.pos_ptr[entry + 1] - index.pos_ptr[entry])
    pos = index.positions[pos_index].astype(np.int64)
    tf = (index.pos_ptr[entry + 1] - index.pos_ptr[entry]).astype(np.float64)
    tf_title = np.bincount(owner, weights=pos < index.title_len[doc[owner]], minlength=len(entry))
    tf_body = tf - tf_title

    def bm25(field_tf: np.ndarray, name: str, length: np.ndarray) -> np.ndarray:
        norm = k1 * (1 - b + b * length[doc] / stats.avg_len[name])
        saturation = np.divide(field_tf, field_tf + norm, out=np.zeros(len(field_tf)), where=field_tf > 0)
        return np.bincount(row, weights=qtf * stats.idf[name][term] * saturation, minlength=n)

    idf_doc = stats.idf["doc"][term]
    idf_max = segment_reduce(np.maximum, idf_doc, row, n, 0.0)
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


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den``, 0 where ``den`` is 0."""
    return np.divide(num, den, out=np.zeros(len(num)), where=den > 0)


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
    longest = segment_reduce(np.maximum, run_length, row_s[start], n, 0.0)
    width = int(length.max(initial=0)) + 1
    bigrams = np.sort(row_s[cont] * width + query_pos_s[cont])
    distinct_bigrams = bigrams[run_starts(bigrams)] // width if len(bigrams) else bigrams
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
    pair_entry, match = gather_slices(first_entry[start_row], per_row[start_row])
    target = pair_entry * stride + start_pos[match]
    slot = np.minimum(np.searchsorted(occurrences, target), max(len(occurrences) - 1, 0))
    hit = occurrences[slot] if len(occurrences) else target
    found = (hit >= target) & (hit // stride == pair_entry)
    end = np.where(found, hit % stride, np.iinfo(np.int64).max // 4).astype(np.float64)
    window = segment_reduce(np.maximum, end, match, len(starts), np.nan) - start_pos + 1
    return segment_reduce(np.minimum, window, start_row, n, np.nan)


def first_stage_features(run: pl.DataFrame) -> np.ndarray:
    """``first_stage_score, first_stage_rank`` of each row; ranks from scores (ties share the best) when absent."""
    rank = pl.col(RANK) if RANK in run.columns else pl.col(SCORE).rank("min", descending=True).over(QID)
    return run.select(pl.col(SCORE).cast(pl.Float64), rank.cast(pl.Float64).alias("_rank")).to_numpy()

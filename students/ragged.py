"""Vectorized operations on ragged data (many variable-length slices of flat NumPy arrays).

The lexical features (:mod:`students.corpus_index`, :mod:`students.feature_matrix`) keep
documents, queries and their matches as flat arrays with slice boundaries instead of Python
lists; these helpers gather and reduce such slices without a Python loop over them.
"""

from __future__ import annotations

import numpy as np


def gather_slices(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the slices ``[starts[i], starts[i] + lengths[i])`` one after another, and
    for each the slice ``i`` it came from: a gather of many variable-length slices in two NumPy calls."""
    # array methods rather than np.repeat/np.cumsum: this runs several times per query, where
    # the functions' Python wrappers cost as much as the work
    lengths = lengths.astype(np.int64, copy=False)
    owner = np.arange(len(lengths)).repeat(lengths)
    ends = lengths.cumsum()
    flat = np.arange(int(ends[-1]) if len(ends) else 0, dtype=np.int64) + (starts - (ends - lengths)).repeat(lengths)
    return flat, owner


def run_starts(values: np.ndarray) -> np.ndarray:
    """Where each run of equal values starts (``values`` non-empty)."""
    change = np.empty(len(values), dtype=bool)
    change[0] = True
    np.not_equal(values[1:], values[:-1], out=change[1:])
    return change.nonzero()[0]


def segment_reduce(ufunc: np.ufunc, values: np.ndarray, row: np.ndarray, n: int, fill: float) -> np.ndarray:
    """``ufunc`` over each run of equal ``row`` values (``row`` sorted); ``fill`` for rows absent."""
    out = np.full(n, fill)
    if len(row):
        starts = run_starts(row)
        out[row[starts]] = ufunc.reduceat(values, starts)
    return out

"""Text analysis of the lexical features: the tokens bm25s makes, computed without bm25s.

:func:`analyze` gives both the corpus index (:mod:`students.corpus_index`) and the queries
(:mod:`students.features`) the analysis of :func:`distill.data.bm25.bm25_run`, so that
``bm25_doc`` equals the first-stage BM25 score.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Sequence

_SPLIT = re.compile(r"(?u)\b\w\w+\b").findall  # bm25s' (and scikit-learn's) token pattern
_THREAD = threading.local()


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

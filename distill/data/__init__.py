"""Datasets and runs: BEIR folders, TREC runs, query-document pairs, BM25, synthetic queries and query
sets.

``distill.data.beir``'s names are importable from here too, as when this package was one module.
"""

from distill.core.lazy import reexport

__getattr__, __dir__ = reexport(__name__, "distill.data.beir")

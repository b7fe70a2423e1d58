"""Offline evaluation: metrics, significance tests, latency, rerank depth, teacher agreement and the
report.

``distill.evaluation.runner``'s names are importable from here too, as when this package was one
module.
"""

from distill.core.lazy import reexport

__getattr__, __dir__ = reexport(__name__, "distill.evaluation.runner")

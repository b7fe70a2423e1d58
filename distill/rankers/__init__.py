"""The ranker interface (BaseRanker) and loading a ranker from a spec (a run, a model folder, a
cascade, a teacher cache) through the registry.

``distill.rankers.loading``'s names are importable from here too, as when this package was one
module.
"""

from distill.core.lazy import reexport

__getattr__, __dir__ = reexport(__name__, "distill.rankers.loading")

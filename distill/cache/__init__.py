"""The teacher-score cache: shards, manifest, locks, text hashes, merge, verify; filling it (scoring)
and the scale of its scores.

``distill.cache.store``'s names are importable from here too, as when this package was one module.
"""

from distill.core.lazy import reexport

__getattr__, __dir__ = reexport(__name__, "distill.cache.store")

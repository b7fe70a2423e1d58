"""``distill serve``: the HTTP edge, request parsing, admission control, the standard rerank APIs and the app.

``distill.serve.app``'s names are importable from here too, as when this package was one module.
"""

from distill.core.lazy import reexport

__getattr__, __dir__ = reexport(__name__, "distill.serve.app")

"""Cascades: the model and its spec, the budgeted search that builds one, and the in-process runtime
that ranks a request.

``distill.cascade.model``'s names are importable from here too, as when this package was one module.
"""

from distill.core.lazy import reexport

__getattr__, __dir__ = reexport(__name__, "distill.cascade.model")

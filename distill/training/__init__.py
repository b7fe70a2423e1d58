"""Training plumbing shared by teachers and students: the trainer (fit), training groups, objectives,
safe checkpoints, training precision and the distillation losses.

``distill.training.trainer``'s names are importable from here too, as when this package was one
module.
"""

from distill.core.lazy import reexport

__getattr__, __dir__ = reexport(__name__, "distill.training.trainer")

"""Students: rerankers trained to imitate a cached teacher (cross-encoder, bi-encoder, LightGBM).

Names are imported on first use (module ``__getattr__``): ``import students.lightgbm`` or
``from students import LightGBMRanker`` does not import torch or the losses.
"""

from __future__ import annotations

import distill  # noqa: F401  (installs the old module paths, e.g. teachers.graph, students.losses)
from distill.core.lazy import lazy_names

# public name -> the module that defines it
_EXPORTS = {
    "BiEncoderRanker": "students.bi_encoder", "train_bi_encoder_student": "students.bi_encoder",
    "train_cross_encoder_student": "students.cross_encoder",
    "teacher_grades": "students.grades",
    "LightGBMConfig": "students.lightgbm", "LightGBMRanker": "students.lightgbm",
    "train_lightgbm_student": "students.lightgbm",
    "LOSSES": "distill.training.losses", "build_loss": "distill.training.losses",
    "RankerFeatures": "students.ranker_features",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_names(__name__, _EXPORTS)

"""Students: rerankers trained to imitate a cached teacher (cross-encoder, bi-encoder, LightGBM).

Names are imported on first use (module ``__getattr__``): ``import students.lightgbm`` or
``from students import LightGBMRanker`` does not import torch or the losses.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

import distill  # noqa: F401  (installs the old module paths, e.g. teachers.graph, students.losses)

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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'students' has no attribute {name!r}")
    return getattr(import_module(module), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

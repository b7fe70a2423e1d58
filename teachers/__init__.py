"""Teachers: models whose raw (query, document) logits the students learn from.

Names are imported on first use (module ``__getattr__``), so importing one teacher module
does not import the others.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

import distill  # noqa: F401  (installs the old module paths, e.g. teachers.graph, students.losses)

# public name -> the module that defines it
_EXPORTS = {
    "Teacher": "teachers.base",
    "CrossEncoderTeacher": "teachers.cross_encoder",
    "GenerativeTeacher": "teachers.generative", "PromptTemplate": "teachers.generative",
    "load_teacher": "teachers.loading", "teacher_from_fingerprint": "teachers.loading",
    "check_teacher": "teachers.sanity",
    "TeacherScoring": "teachers.scoring", "score_teacher": "teachers.scoring",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'teachers' has no attribute {name!r}")
    return getattr(import_module(module), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

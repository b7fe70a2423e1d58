"""Teachers: models whose raw (query, document) logits the students learn from.

Names are imported on first use (module ``__getattr__``), so importing one teacher module
does not import the others.
"""

from __future__ import annotations

import distill  # noqa: F401  (installs the old module paths, e.g. teachers.graph, students.losses)
from distill.core.lazy import lazy_names

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
__getattr__, __dir__ = lazy_names(__name__, _EXPORTS)

"""Teachers: models whose raw (query, document) logits the students learn from."""

from teachers.base import Teacher
from teachers.cross_encoder import CrossEncoderTeacher
from teachers.generative import GenerativeTeacher, PromptTemplate
from teachers.loading import load_teacher
from teachers.sanity import check_teacher
from teachers.scoring import TeacherScoring, score_teacher

__all__ = ["CrossEncoderTeacher", "GenerativeTeacher", "PromptTemplate", "Teacher", "TeacherScoring", "check_teacher",
           "load_teacher", "score_teacher"]

"""The LightGBM student as a kind of :mod:`students.student`: ``lightgbm``, configured by
:class:`students.lightgbm.LightGBMConfig` and trained by :func:`students.lightgbm.train_lightgbm_student`
on the candidates the teacher scored."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from distill.core.errors import ConfigError
from distill.core.schema import DOCID, QID
from students.lightgbm import KIND, LightGBMConfig, train_lightgbm_student
from students.student import Distillation, Student, StudentResult


class LightGBMStudent(Student):
    """LambdaMART over lexical features (and other rankers' scores), fit to the teacher's grades or scores."""

    kind = "lightgbm"
    output_kind = KIND
    config_type = LightGBMConfig

    @classmethod
    def from_options(cls, options: Mapping[str, Any], configs: Iterable[object] = ()) -> LightGBMStudent:
        """As :meth:`Student.from_options`; the learning rate shared with the neural students, ``lr``, is
        LightGBM's ``learning_rate``."""
        return super().from_options({"learning_rate": options.get("lr"), **options}, configs)

    def train(self, job: Distillation, out: Path) -> StudentResult:
        if job.rounds is not None and job.rounds.rounds > 1:
            raise ConfigError("rounds are for neural students; LightGBM stops early on its own validation")
        candidates = job.scores.select(QID, DOCID).join(job.dataset.queries.select(QID), on=QID, how="semi")
        path = train_lightgbm_student(job.dataset, candidates, job.scores, out, self.config,
                                      teacher_fingerprint=job.teacher_fingerprint, scores_source=job.scores_source,
                                      overwrite=job.overwrite)
        return StudentResult(path, self._validate(job, path))

"""What a kind of student is: a :class:`Student` type, and what every kind shares.

A kind (``cross-encoder``, ``bi-encoder``, ``lightgbm``) is a :class:`Student` subclass declared in
the ``distill.students`` entry points (:data:`distill.core.registry.STUDENTS`), with its own config
dataclass (``config_type``) for the options only it has. :meth:`Student.from_options` builds one from
flat options named like its configs' fields (what ``distill train-student`` and the pipeline pass, a
kind ignoring the others'), and :meth:`Student.train` distills a :class:`Distillation` (the teacher's
scores and how to learn from them) into a folder. :func:`students.train.train_student` is the one
function to call: it picks the type by kind and checks the result for a collapse.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import polars as pl

from distill.core.io import write_json_atomic
from distill.core.recorded_paths import rebase
from distill.data.beir import Dataset
from students.validation import Validation, ValidationResult

if TYPE_CHECKING:
    from distill.training.losses import DistillLoss
    from students.rounds import RoundsConfig


@dataclass
class Distillation:
    """What a student learns from, the teacher ``scores`` (``qid, docid, score``) of ``dataset``'s queries,
    and how its training is checked and recorded.

    ``loss`` to ``rounds`` are the neural students' (see :func:`students.train.train_student`); LightGBM
    takes none of them but ``rounds`` (refusing more than one). ``validation`` validates the saved student;
    ``teacher_fingerprint`` and ``scores_source`` (the cache folder) are recorded and named in messages.
    ``overwrite`` replaces an output folder that is no earlier student of the same kind.
    """

    dataset: Dataset
    scores: pl.DataFrame
    loss: str | DistillLoss | None = None
    loss_params: dict[str, Any] | None = None
    hard_label_weight: float = 0.0
    hard_label_kind: str = "bce"
    init: str | None = None
    teacher_scale: float | str | None = "auto"
    rounds: RoundsConfig | None = None  # None: one round
    validation: Validation | None = None
    teacher_fingerprint: dict[str, Any] | None = None
    scores_source: str | Path | None = None
    trust_remote_code: bool = False
    overwrite: bool = False


@dataclass
class StudentResult:
    """Where the student is, what validation said (None without validation), which round was kept."""

    path: Path
    validation: ValidationResult | None
    kept_round: int | None = None
    rounds: list[dict[str, Any]] | None = None


class Student(ABC):
    """One kind of student, configured: ``config`` is its ``config_type`` (default settings when None)."""

    kind: ClassVar[str]  # ``--student KIND``
    output_kind: ClassVar[str]  # the ``kind`` in its folders' distill.json
    config_type: ClassVar[type]  # the dataclass of its own options

    def __init__(self, config: Any = None) -> None:
        self.config = self.config_type() if config is None else config

    @classmethod
    def from_options(cls, options: Mapping[str, Any], configs: Iterable[object] = ()) -> Student:
        """This kind of student from ``options`` named like its config's fields (a config in ``configs`` of
        that type is taken as it is; see :func:`build_config`)."""
        return cls(build_config(cls.config_type, options, configs))

    def check_options(self, options: Mapping[str, Any]) -> None:  # noqa: B027  (a hook, a no-op by default)
        """Refuse, before any work, command-line ``options`` this kind cannot honour (``loss``, ``init``,
        ``init_from_teacher`` and other kinds' options among them); every kind takes any by default."""

    @abstractmethod
    def train(self, job: Distillation, out: Path) -> StudentResult:
        """Train this student on ``job`` into the folder ``out`` (already checked as an output of this kind) and
        validate it when ``job.validation`` is set."""

    def _validate(self, job: Distillation, folder: Path, **extra: Any) -> ValidationResult | None:
        """``job``'s validation of the student at ``folder``, recorded in its manifest with ``extra``."""
        if job.validation is None:
            return None
        result = job.validation.score_folder(folder)
        add_to_manifest(folder, {"validation": result.to_dict(), **extra})
        return result


def build_config(config_type: type, options: Mapping[str, Any], configs: Iterable[object] = ()) -> Any:
    """A ``config_type``: the one in ``configs`` of that type, else one made of the ``options`` named like its
    fields. Other options are another config's and ignored; an option that is None keeps the field's default,
    which is how a setting shared by several kinds (``lr``, ``valid_fraction``) gets each kind's own."""
    given = next((config for config in configs if isinstance(config, config_type)), None)
    if given is not None:
        return given
    names = {f.name for f in fields(config_type)}
    return config_type(**{name: value for name, value in options.items() if name in names and value is not None})


def add_to_manifest(folder: Path, extra: dict[str, Any]) -> None:
    """Add ``extra`` to the student's ``distill.json`` manifest (LightGBM's too)."""
    path = folder / "distill.json"
    manifest = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    write_json_atomic(path, {**manifest, **extra})


def rebase_data(folder: Path, source: Path) -> None:
    """A student copied from ``source`` to ``folder`` records its training data relative to ``folder``."""
    path = folder / "distill.json"
    data = json.loads(path.read_text(encoding="utf-8")).get("data") if path.exists() else None
    if isinstance(data, dict) and data.get("path"):
        add_to_manifest(folder, {"data": rebase(data, folder, source)})

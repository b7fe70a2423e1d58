"""``train_student``: one public function that distills cached teacher scores into any student.

It takes Python objects (a :class:`~distill.data.beir.Dataset`, a scores frame, configs, a loss
name or a loss object), picks the kind's :class:`~students.student.Student` type from
:data:`distill.core.registry.STUDENTS` (:mod:`students.cross_encoder`, :mod:`students.bi_encoder`,
:mod:`students.lightgbm_student`), and adds what a user should get by default:

- **a temperature from the teacher's scale** for a listwise loss given none, and teacher scores in
  units of their spread for a regression loss (:mod:`students.neural`);
- **rounds** (:class:`~students.rounds.RoundsConfig`, :mod:`students.rounds`): round ``r`` is one
  more epoch starting from round ``r - 1``'s model over negatives sampled afresh; finished rounds
  are kept in ``<out>.rounds/`` and a rerun resumes them; the best round on validation becomes ``out``;
- **validation and collapse detection** (:mod:`students.validation`): the saved student
  reranks the validation queries' first-stage candidates; a student with near-constant
  scores or below the first stage raises :class:`~students.validation.StudentCollapseError`
  unless ``allow_collapse``, and one below its own starting point is reported loudly.

``distill train-student`` is a thin wrapper around it. Under ``torchrun`` the neural students train
with DDP, rank 0 owning every output and message (docs/distributed.md).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from distill.core.errors import ConfigError
from distill.core.io import atomic_dir
from distill.core.outputs import check_folder, check_folder_output
from distill.core.registry import STUDENTS
from distill.data.beir import Dataset
from students.rounds import LR_SCHEDULES, LrSchedule, RoundsConfig  # noqa: F401  (importable from here as before)
from students.student import Distillation, Student, StudentResult, add_to_manifest, rebase_data
from students.validation import Validation, check_collapse

if TYPE_CHECKING:
    from distill.training.config import TrainConfig
    from distill.training.groups import GroupConfig
    from distill.training.losses import DistillLoss
    from students.lightgbm import LightGBMConfig

log = logging.getLogger(__name__)


def train_student(
    kind: str | Student,
    dataset: Dataset,
    scores: pl.DataFrame,
    out: str | Path,
    *,
    loss: str | DistillLoss | None = None,
    loss_params: dict[str, Any] | None = None,
    hard_label_weight: float = 0.0,
    hard_label_kind: str = "bce",
    init: str | None = None,
    init_from_teacher_layers: int | None = None,
    layer_choice: str = "first",
    group_config: GroupConfig | None = None,
    train_config: TrainConfig | None = None,
    rounds: RoundsConfig | None = None,
    validation: Validation | None = None,
    allow_collapse: bool = False,
    bi_encoder: dict[str, Any] | None = None,
    lightgbm: LightGBMConfig | None = None,
    teacher_fingerprint: dict[str, Any] | None = None,
    scores_source: str | Path | None = None,
    teacher_scale: float | str | None = "auto",
    trust_remote_code: bool = False,
    overwrite: bool = False,
) -> StudentResult:
    """Distill the teacher ``scores`` (``qid, docid, score``) of ``dataset``'s queries into a
    ``kind`` student at ``out`` (see the module docstring).

    ``kind`` is a registered kind's name (``cross-encoder``, ``bi-encoder``, ``lightgbm``) configured by
    the arguments below, or a :class:`~students.student.Student`, which brings its own config, group and
    train configs (``init_from_teacher_layers`` to ``train_config``, ``bi_encoder`` and ``lightgbm`` then
    go unused). Neural students need ``loss`` (a registered name, e.g. ``"MarginMSE"``, or a
    :class:`distill.training.losses.DistillLoss`) and ``init`` (a model path or id; for a cross-encoder
    with ``init_from_teacher_layers=N``, the teacher to cut to N layers). ``bi_encoder`` holds
    ``similarity``, ``scale``, ``learn_scale`` (:class:`students.bi_encoder.BiEncoderConfig`); ``lightgbm``
    is the :class:`students.lightgbm.LightGBMConfig`. With ``validation``, the student is validated
    and checked for collapse. ``teacher_scale``: what a regression loss's teacher scores are
    divided by (``"auto"``: their median per-query std for MarginMSE and MSE, see
    :func:`distill.cache.score_scale.teacher_divisor`; None: raw scores). ``out`` replaces only an earlier
    student of the same kind, unless ``overwrite`` (see :mod:`distill.core.outputs`).
    """
    student = kind if isinstance(kind, Student) else STUDENTS.get(kind, field="student").from_options(
        {"layers": init_from_teacher_layers, "layer_choice": layer_choice, **(bi_encoder or {})},
        configs=(group_config, train_config, lightgbm))
    out = Path(out)
    _join_ranks(student)
    check_folder_output(out, student.output_kind, overwrite=overwrite)
    job = Distillation(dataset, scores, loss=loss, loss_params=loss_params, hard_label_weight=hard_label_weight,
                       hard_label_kind=hard_label_kind, init=init, teacher_scale=teacher_scale, rounds=rounds,
                       validation=validation, teacher_fingerprint=teacher_fingerprint, scores_source=scores_source,
                       trust_remote_code=trust_remote_code, overwrite=overwrite)
    result = student.train(job, out)
    if result.validation is not None:
        check_collapse(result.validation, f"the {student.kind} student at {result.path}", allow=allow_collapse)
    return result


def _join_ranks(student: Student) -> None:
    """Under ``torchrun``, join the process group (rank 0 then owns outputs and console, see
    :mod:`distill.training.distributed`); only the neural students train with several processes."""
    from distill.training.distributed import init, world_size
    from students.neural import NeuralStudent

    if world_size() > 1 and not isinstance(student, NeuralStudent):
        raise ConfigError(f"the {student.kind} student trains in one process; run it without torchrun")
    init()


def output_kinds() -> tuple[str, ...]:
    """The ``distill.json`` kinds of every registered student's folders."""
    return tuple(STUDENTS.get(kind).output_kind for kind in STUDENTS.kinds())


def select_student(folders: list[str | Path], out: str | Path, *, overwrite: bool = False) -> Path:
    """Copy to ``out`` the student of ``folders`` with the best validation in its manifest (trained with
    a validation split), and record the choice there: e.g. LightGBM students of several qrels weights.
    ``out`` replaces only an earlier student, unless ``overwrite``; it may not be one of ``folders``."""
    kinds = output_kinds()
    check_folder(out, kinds, overwrite=overwrite, inputs=folders)
    scored = {}
    for folder in map(Path, folders):
        path = folder / "distill.json"
        validation = json.loads(path.read_text(encoding="utf-8")).get("validation") if path.exists() else None
        if validation is None:
            raise ConfigError("this student was trained without --valid-split: nothing to choose by", path=folder)
        scored[str(folder)] = validation
    best = max(scored, key=lambda f: (scored[f]["value"], -list(scored).index(f)))
    out = Path(out)
    with atomic_dir(out, kind=kinds, overwrite=overwrite) as tmp:
        shutil.copytree(best, tmp, dirs_exist_ok=True)
    rebase_data(out, Path(best))
    add_to_manifest(out, {"chosen_from": {f: v["value"] for f, v in scored.items()}, "chosen": best})
    log.info("kept %s: validation %s %.4f (%s)", best, scored[best]["metric"], scored[best]["value"],
             ", ".join(f"{Path(f).name} {v['value']:.4f}" for f, v in scored.items()))
    return out

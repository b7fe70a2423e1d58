"""The work of ``distill train-student`` and ``distill select-student``, as functions of files and
settings (see :mod:`distill.app.tasks`, which re-exports them)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill.app.options import option_fields
from distill.core.errors import ConfigError, InputError
from distill.core.outputs import check_folder
from distill.core.registry import STUDENTS
from distill.training.config import TrainConfig
from distill.training.groups import GroupConfig

if TYPE_CHECKING:
    import polars as pl

    from students.student import Student
    from students.train import StudentResult

log = logging.getLogger("distill")

#: train-student's options for the neural students' GroupConfig and TrainConfig, and the field each sets
#: (``{"negatives": "n_negatives", ...}``), as their fields' metadata names them
TRAINING_OPTIONS = option_fields(GroupConfig, TrainConfig)


def parse_loss_params(items: Sequence[str]) -> dict[str, Any]:
    """``["temperature=2", "margin=0.5"]`` → ``{"temperature": 2, "margin": 0.5}`` (JSON values, else strings)."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--loss-param must look like name=value, got {item!r}", field="loss-param")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
    return params


def teacher_path(manifest: dict[str, Any], cache: Path) -> str:
    """The teacher model recorded in a cache manifest's fingerprint (for --init-from-teacher)."""
    teacher = manifest.get("teacher") or {}
    for key in ("model", "model_name_or_path", "path"):
        if isinstance(teacher.get(key), str):
            return teacher[key]
    raise ConfigError(f"the cache's teacher fingerprint names no model ({teacher}); pass --teacher PATH",
                      path=cache, field="teacher")


def run_train_student(student: str, cache: Path, data: Path, out: Path, *, split: str | None = None,
                  queries: Path | None = None, valid_split: str | None = None, valid_run: Path | None = None,
                  allow_collapse: bool = False, loss: str | None = None, loss_params: dict[str, Any] | None = None,
                  teacher_scale: float | str | None = "auto", hard_label_weight: float = 0.0,
                  hard_label_kind: str = "bce", init: str | None = None, init_from_teacher: bool = False,
                  teacher: str | None = None, rounds: int = 1, lr_schedule: str = "constant", resume: bool = False,
                  feature_rankers: Mapping[str, str] | None = None, trust_remote_code: bool = False,
                  overwrite: bool = False, engine: str = "local", ray_options: Mapping[str, Any] | None = None,
                  **options: Any) -> StudentResult:
    """``distill train-student``: distill the scores of the teacher cache ``cache`` into a ``student``
    (a kind of :data:`~distill.core.registry.STUDENTS`: cross-encoder | bi-encoder | lightgbm) trained on
    ``split``'s and ``queries``' queries.

    ``valid_split`` (with its candidates ``valid_run``) validates every round and checks for a collapse;
    ``init_from_teacher`` starts a cross-encoder from ``layers`` of ``teacher``'s (the cache's teacher when None).
    ``options`` set the student's configs, under train-student's names: :data:`TRAINING_OPTIONS` (the neural
    students' GroupConfig and TrainConfig) and the fields of the kinds' own configs (``layers``, ``layer_choice``;
    ``similarity``, ``scale``, ``learn_scale``; ``objective`` to ``early_stopping_rounds``, where LightGBM reads
    ``lr``, ``valid_fraction`` and ``seed`` too, and its ``feature_rankers``: other rankers' scores as features,
    name -> spec). An option left out or None keeps the default of the config that owns it (``lr``: the neural
    students' TrainConfig 2e-5, LightGBMConfig 0.05), and a student ignores other kinds' options, but the neural
    students refuse LightGBM's ``feature_rankers`` and ``qrels_weight``. ``overwrite`` replaces an ``out`` that
    is no earlier student of this kind.

    ``engine="ray"`` trains a neural student with Ray Train's workers, each running this function with the
    local engine (:mod:`students.ray_train`; ``ray_options``: the fields of its RayTrainConfig, address,
    num_workers, gpus_per_worker, cpus_per_worker); the inputs are checked here first.
    """
    call = dict(locals())  # this call's arguments, for the Ray workers
    from students.train import RoundsConfig
    from students.train import train_student as train
    from students.validation import Validation

    kind = STUDENTS.get(student, field="student")
    _check_engine(kind, engine, ray_options)
    check_folder(out, kind.output_kind, overwrite=overwrite, datasets=[data],
                 inputs=[cache, queries, valid_run, init, teacher, *(feature_rankers or {}).values()])
    options = {**options, "feature_rankers": feature_rankers}
    chosen = kind.from_options(_config_fields(options, resume))
    chosen.check_options({**options, "loss": loss, "init": init, "init_from_teacher": init_from_teacher})
    if engine == "ray":
        return _train_on_ray(call, out, ray_options)
    scores, manifest, dataset = _training_scores(cache, data, split, queries)
    if init_from_teacher:
        init = teacher or teacher_path(manifest, cache)
    return train(chosen, dataset, scores, out, loss=loss, loss_params=loss_params, hard_label_weight=hard_label_weight,
                 hard_label_kind=hard_label_kind, init=init, teacher_scale=teacher_scale,
                 rounds=RoundsConfig(rounds, lr_schedule),
                 validation=Validation.load(data, valid_split, valid_run) if valid_split else None,
                 allow_collapse=allow_collapse, teacher_fingerprint=manifest.get("teacher"), scores_source=cache,
                 trust_remote_code=trust_remote_code, overwrite=overwrite)


def _check_engine(kind: type[Student], engine: str, ray_options: Mapping[str, Any] | None) -> None:
    """``engine`` is local or ray; ray options only with ray; on Ray only the neural students (LightGBM trains
    in one process: see docs/distributed.md)."""
    from students.neural import NeuralStudent

    if engine not in ("local", "ray"):
        raise ConfigError(f"--engine must be local or ray, got {engine!r}", field="engine")
    if ray_options and engine != "ray":
        raise ConfigError(f"--{next(iter(ray_options)).replace('_', '-')} applies to --engine ray only")
    if engine == "ray" and not issubclass(kind, NeuralStudent):
        raise ConfigError(f"the {kind.kind} student trains in one process: --engine ray is for the neural "
                          "students (see docs/distributed.md)", field="engine")


#: run_train_student's arguments that name files or folders (``init`` and ``teacher`` when they exist: else hub ids)
PATH_ARGUMENTS = ("cache", "data", "out", "queries", "valid_run", "init", "teacher")


def _train_on_ray(call: Mapping[str, Any], out: Path, ray_options: Mapping[str, Any] | None) -> StudentResult:
    """:func:`run_train_student` with ``call``'s arguments and the local engine, in each Ray Train worker; paths
    made absolute here, as Ray workers run in folders of their own."""
    from functools import partial

    from students.ray_train import RayTrainConfig, train_on_ray

    arguments = {name: value for name, value in call.items() if name not in ("options", "engine", "ray_options")}
    for name in PATH_ARGUMENTS:
        value = arguments[name]
        if isinstance(value, Path) or (isinstance(value, str) and Path(value).exists()):
            arguments[name] = type(value)(Path(value).absolute())
    work = partial(run_train_student, **arguments, **call["options"])
    return train_on_ray(work, RayTrainConfig(**(ray_options or {})), out)


def _config_fields(options: Mapping[str, Any], resume: bool) -> dict[str, Any]:
    """``options`` under the names of the config fields they set, and ``resume`` as TrainConfig's
    ``resume_from_checkpoint``; an option no config has is a TypeError, as any unknown keyword argument."""
    kinds = [STUDENTS.get(kind) for kind in STUDENTS.kinds()]
    known = {*TRAINING_OPTIONS, *(f.name for kind in kinds for f in fields(kind.config_type))}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"run_train_student() got unexpected keyword arguments: {', '.join(unknown)}")
    return {**{TRAINING_OPTIONS.get(name, name): value for name, value in options.items()},
            "resume_from_checkpoint": True if resume else None}


def _training_scores(cache: Path, data: Path, split: str | None,
                     queries: Path | None) -> tuple[pl.DataFrame, dict[str, Any], Any]:
    """The cache's scores of the training queries (``split``'s, else train, and ``queries``') computed from
    their current texts, the manifest and those queries, with a warning when some of their registered pairs
    have no such score (a stopped score-teacher, or texts edited since it ran)."""
    from distill.cache.store import TeacherCache
    from distill.data.querysets import load_training_queries

    dataset = load_training_queries(data, split if split or queries else "train", queries)
    store = TeacherCache.open(cache)
    scores, (unscored, registered) = store.scores_and_unscored(dataset.queries["qid"], dataset)  # one read
    if scores.height == 0:
        raise InputError("teacher cache holds no scores yet", path=cache)
    if unscored:
        log.warning("%d of the %d candidate pairs registered in %s for these queries have no teacher score "
                    "yet from their current texts (a stopped score-teacher, or texts edited since): training on the "
                    "scored ones only; rerun score-teacher to finish", unscored, registered, cache)
    return scores, store.manifest, dataset


def run_select_student(folders: Sequence[Path], out: Path, *, overwrite: bool = False) -> Path:
    """``distill select-student``: copy to ``out`` the student of ``folders`` with the best validation
    nDCG@10 (:func:`students.train.select_student`)."""
    from students.train import select_student

    return select_student(list(folders), out, overwrite=overwrite)

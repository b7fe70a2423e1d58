"""``distill train-student``'s work, as one function of files and settings (see :mod:`distill.app.tasks`,
which re-exports it)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill.core.errors import ConfigError
from distill.core.outputs import check_folder

if TYPE_CHECKING:
    import polars as pl

    from students.train import StudentResult

log = logging.getLogger("distill")

STUDENTS = ("cross-encoder", "bi-encoder", "lightgbm")


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


def train_student(student: str, cache: Path, data: Path, out: Path, *, split: str | None = None,
                  queries: Path | None = None, loss: str | None = None, loss_params: dict[str, Any] | None = None,
                  teacher_scale: float | str | None = "auto", hard_label_weight: float = 0.0,
                  hard_label_kind: str = "bce", init: str | None = None, init_from_teacher: bool = False,
                  layers: int | None = None, layer_choice: str = "first", teacher: str | None = None,
                  mode: str = "sampled", negatives: int = 7, listwise_k: int = 8, positive_source: str = "qrels",
                  fn_margin: float | None = None, epochs: float = 1.0, rounds: int = 1, lr_schedule: str = "constant",
                  lr: float | None = None, batch_size: int = 8, max_length: int = 256,
                  valid_fraction: float | None = None, valid_split: str | None = None, valid_run: Path | None = None,
                  allow_collapse: bool = False, seed: int = 42, precision: str = "auto", resume: bool = False,
                  checkpoint_steps: int | None = None, similarity: str = "cosine", scale: float = 20.0,
                  learn_scale: bool = False, objective: str = "lambdarank", n_grades: int = 5, num_leaves: int = 31,
                  min_data_in_leaf: int = 20, qrels_weight: float = 0.0, n_estimators: int = 500,
                  early_stopping_rounds: int = 50, feature_rankers: Mapping[str, str] | None = None,
                  trust_remote_code: bool = False, overwrite: bool = False) -> StudentResult:
    """``distill train-student``: distill the scores of the teacher cache ``cache`` into a ``student``
    (cross-encoder | bi-encoder | lightgbm) trained on ``split``'s and ``queries``' queries.

    ``valid_split`` (with its candidates ``valid_run``) validates every round and checks for a
    collapse. ``similarity``, ``scale`` and ``learn_scale`` are the bi-encoder's; ``objective`` to
    ``feature_rankers`` (other rankers' scores as features, name → spec) LightGBM's. ``lr`` and
    ``valid_fraction`` default to 2e-5 and 0 for neural students, 0.05 and 0.2 for LightGBM. ``overwrite``
    replaces an ``out`` that is no earlier student of this kind.
    """
    from students.train import RoundsConfig
    from students.train import train_student as train
    from students.validation import Validation

    if student not in STUDENTS:
        raise ConfigError(f"--student must be one of {', '.join(STUDENTS)}, got {student!r}")
    check_folder(out, f"{student}-student", overwrite=overwrite, datasets=[data],
                 inputs=[cache, queries, valid_run, init, teacher, *(feature_rankers or {}).values()])
    if (feature_rankers or qrels_weight) and student != "lightgbm":
        raise ConfigError("--feature-ranker and --qrels-weight are for the lightgbm student only "
                          "(neural students mix qrels in with --hard-label-weight)")
    scores, manifest, dataset = _training_scores(cache, data, split, queries)
    common = dict(teacher_fingerprint=manifest.get("teacher"), allow_collapse=allow_collapse, scores_source=cache,
                  validation=Validation.load(data, valid_split, valid_run) if valid_split else None,
                  overwrite=overwrite)
    if student == "lightgbm":
        from students.lightgbm import LightGBMConfig

        config = LightGBMConfig(
            objective=objective, n_grades=n_grades, num_leaves=num_leaves, min_data_in_leaf=min_data_in_leaf,
            qrels_weight=qrels_weight, learning_rate=0.05 if lr is None else lr, n_estimators=n_estimators,
            valid_fraction=0.2 if valid_fraction is None else valid_fraction,
            early_stopping_rounds=early_stopping_rounds, seed=seed, feature_rankers=dict(feature_rankers or {}))
        return train("lightgbm", dataset, scores, out, lightgbm=config, rounds=RoundsConfig(rounds), **common)
    from distill.training.groups import GroupConfig
    from distill.training.losses import LOSSES
    from distill.training.trainer import TrainConfig

    if loss is None:
        raise ConfigError(f"a {student} student needs --loss, one of: {', '.join(LOSSES)}")
    _check_init(student, init, init_from_teacher, layers)
    if init_from_teacher:
        init = teacher or teacher_path(manifest, cache)
    groups = GroupConfig(mode=mode, n_negatives=negatives, listwise_k=listwise_k, positive_source=positive_source,
                         false_negative_margin=fn_margin, seed=seed)
    settings = TrainConfig(epochs=epochs, lr=2e-5 if lr is None else lr, batch_size=batch_size, max_length=max_length,
                           seed=seed, precision=precision, valid_fraction=0.0 if valid_fraction is None else
                           valid_fraction, eval_steps=checkpoint_steps, resume_from_checkpoint=True if resume else None)
    return train(student, dataset, scores, out, loss=loss, loss_params=loss_params,
                 hard_label_weight=hard_label_weight, hard_label_kind=hard_label_kind, init=init,
                 teacher_scale=teacher_scale, init_from_teacher_layers=layers if student == "cross-encoder" else None,
                 layer_choice=layer_choice, group_config=groups, train_config=settings,
                 rounds=RoundsConfig(rounds, lr_schedule),
                 bi_encoder={"similarity": similarity, "scale": scale, "learn_scale": learn_scale}
                 if student == "bi-encoder" else None,
                 trust_remote_code=trust_remote_code, **common)


def _training_scores(cache: Path, data: Path, split: str | None,
                     queries: Path | None) -> tuple[pl.DataFrame, dict[str, Any], Any]:
    """The cache's scores of the training queries (``split``'s, else train, and ``queries``') computed from
    their current texts, the manifest and those queries, with a warning when some of their registered pairs
    have no such score (a stopped score-teacher, or texts edited since it ran)."""
    from distill.cache.store import TeacherCache, read_scores
    from distill.data.querysets import load_training_queries

    dataset = load_training_queries(data, split if split or queries else "train", queries)
    scores, manifest = read_scores(cache, dataset=dataset)
    unscored, registered = TeacherCache.open(cache).unscored(dataset.queries["qid"], dataset=dataset)
    if unscored:
        log.warning("%d of the %d candidate pairs registered in %s for these queries have no teacher score "
                    "yet from their current texts (a stopped score-teacher, or texts edited since): training on the "
                    "scored ones only; rerun score-teacher to finish", unscored, registered, cache)
    return scores, manifest, dataset


def _check_init(student: str, init: str | None, init_from_teacher: bool, layers: int | None) -> None:
    """A neural student starts from ``init``, or (a cross-encoder) from ``layers`` of the teacher's."""
    if student == "cross-encoder":
        if init_from_teacher == (init is not None):
            raise ConfigError("a cross-encoder student needs exactly one of --init PATH or "
                              "--init-from-teacher --layers N")
        if init_from_teacher != (layers is not None):
            raise ConfigError("--init-from-teacher and --layers N (the teacher layers to keep) go together")
    elif init is None or init_from_teacher:
        raise ConfigError("a bi-encoder student needs --init (a SentenceTransformer folder or id, e.g. "
                          "all-MiniLM-L6-v2); --init-from-teacher is for cross-encoders")

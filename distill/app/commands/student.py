"""``distill train-student`` and ``distill select-student``.

train-student's options of a setting take their defaults from the configs that own them, which make them from
their fields (:mod:`distill.app.options`): the neural students' :class:`~distill.training.groups.GroupConfig`,
:class:`~distill.training.config.TrainConfig` and :class:`~students.rounds.RoundsConfig`, and the per-student
configs (:class:`~students.cross_encoder.CrossEncoderConfig`, :class:`~students.bi_encoder.BiEncoderConfig`,
:class:`~students.lightgbm.LightGBMConfig`), whose options are grouped under the kind's name in ``--help``.
Declared here are the options of the run (validation, resuming) and those whose command-line form is no
field's: ``--feature-ranker NAME=SPEC``, repeated, is LightGBMConfig's ``feature_rankers`` mapping.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import typer

from distill.app.commands import positive
from distill.app.options import config_options, with_options
from distill.core.errors import ConfigError
from distill.core.outputs import OVERWRITE_HELP
from distill.core.registry import STUDENTS
from distill.training.config import TrainConfig
from distill.training.groups import GroupConfig
from students.bi_encoder import BiEncoderConfig
from students.cross_encoder import CrossEncoderConfig
from students.lightgbm import LightGBMConfig
from students.rounds import RoundsConfig

CROSS_ENCODER, BI_ENCODER, LIGHTGBM = "Cross-encoder", "Bi-encoder", "LightGBM"  # --help panels
_T, _L = TrainConfig(), LightGBMConfig()
#: TrainConfig's options that set LightGBMConfig's fields too, each config keeping its own default
_SHARED = {"lr": {"neural": _T.lr, "lightgbm": _L.learning_rate},
           "valid_fraction": {"neural": _T.valid_fraction, "lightgbm": _L.valid_fraction}}


def _option(name: str, annotation: Any, default: Any, help: str, *declarations: str,
            **arguments: Any) -> inspect.Parameter:
    """A keyword-only typer option for :func:`~distill.app.options.with_options`."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=typer.Option(default, *declarations, help=help, **arguments))


def _training_options() -> list[inspect.Parameter]:
    """The neural students' groups (GroupConfig), training (TrainConfig, whose ``lr``, ``valid_fraction`` and
    ``seed`` LightGBM takes too) and rounds (RoundsConfig)."""
    return [*config_options(GroupConfig), *config_options(TrainConfig, shared=_SHARED), *config_options(RoundsConfig)]


def _run_options() -> list[inspect.Parameter]:
    """Validation and resuming."""
    return [
        _option("valid_split", str, None, "Judged queries of --data (`qrels/<split>.tsv`) the student is validated "
                "on: nDCG@10 after each round, the best round kept, collapse checked [none: no validation]."),
        _option("valid_run", Path, None, "Candidates of --valid-split (TREC run) [BM25 top 100]."),
        _option("allow_collapse", bool, False, "Exit 0 even when the student collapses on validation "
                "(near-constant scores, or worse than the first stage)."),
        _option("resume", bool, False, "Continue from the latest checkpoint in `<out>.checkpoints` (with --rounds a "
                "rerun continues by itself)."),
    ]


#: the options of --engine ray, as named in students.ray_train.RayTrainConfig
RAY_OPTIONS = ("address", "num_workers", "gpus_per_worker")


def _engine_options() -> list[inspect.Parameter]:
    """Where the neural students train: this process (or torchrun's), or Ray Train's workers."""
    return [
        _option("engine", str, "local", "local (this process, or each of torchrun's) | ray (Ray Train's workers, "
                "neural students; see docs/distributed.md)."),
        _option("address", str, None, "--engine ray: the cluster, auto or HOST:PORT of its head [a new local Ray on "
                "this machine's CPUs and GPUs]."),
        _option("num_workers", int, None, "--engine ray: training processes (DDP ranks) [1].", min=1),
        _option("gpus_per_worker", float, None, "--engine ray: 0 (CPU workers) or 1 (a GPU each) [0].", min=0),
    ]


def _student_options() -> list[inspect.Parameter]:
    """Each kind's own options, under its name in ``--help``."""
    return [
        _option("init_from_teacher", bool, False, "Cross-encoder: start from some of the teacher's layers.",
                rich_help_panel=CROSS_ENCODER),
        *config_options(CrossEncoderConfig, panel=CROSS_ENCODER),
        _option("teacher", str, None, "With --init-from-teacher: the teacher [the cache's].",
                rich_help_panel=CROSS_ENCODER),
        *config_options(BiEncoderConfig, panel=BI_ENCODER, scale={"callback": positive}),
        *config_options(LightGBMConfig, panel=LIGHTGBM),
        _option("feature_ranker", list[str], [], "LightGBM: NAME=SPEC, another ranker's score as a feature (e.g. a "
                "bi-encoder folder); repeatable [none].", "--feature-ranker", rich_help_panel=LIGHTGBM),
    ]


def _teacher_scale(text: str) -> float | str | None:
    """``--teacher-scale``: auto | none | a positive number."""
    if text in ("auto", "none"):
        return None if text == "none" else text
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"--teacher-scale must be auto, none or a number, got {text!r}",
                          field="teacher-scale") from None


def register(app: typer.Typer) -> None:
    from distill.training.losses import LOSS_NAMES  # the registry's names, without torch

    @app.command("train-student")
    @with_options(_training_options(), _run_options(), _engine_options(), _student_options())
    def train_student_command(
        student: str = typer.Option(..., help=f"{' | '.join(STUDENTS.kinds())}."),
        cache: Path = typer.Option(..., help="Teacher cache folder (from `distill score-teacher`)."),
        data: Path = typer.Option(..., help="BEIR folder the cache was scored on."),
        split: str = typer.Option(None, help="Queries of `qrels/<split>.tsv` to train on [train, unless --queries]."),
        queries: Path = typer.Option(None, help="Unjudged training queries: BEIR queries.jsonl or TSV `qid<TAB>text` "
                                     "(e.g. from `distill pseudo-queries`); added to --split's when both are given "
                                     "[none]."),
        out: Path = typer.Option(..., help="Student folder to write."),
        loss: str = typer.Option(None, help=f"Neural students: {' | '.join(LOSS_NAMES)} (see docs/losses.md) "
                                            "[required for neural students]."),
        loss_param: list[str] = typer.Option([], "--loss-param", help="Loss hyperparameter name=value, repeatable "
                                             "(a listwise loss given no temperature gets the teacher's median "
                                             "per-query score spread) [none]."),
        teacher_scale: str = typer.Option("auto", help="MarginMSE/MSE: divide the teacher's scores by this: auto "
                                          "(their median per-query std, see `distill cache info`) | none | a number."),
        hard_label_weight: float = typer.Option(0.0, min=0.0, help="Weight of a qrels term mixed into the loss."),
        hard_label_kind: str = typer.Option("bce", help="Hard-label term: bce | listwise_ce | listnet."),
        init: str = typer.Option(None, help="Student to start from: folder or hub id [required for neural students, "
                                            "unless --init-from-teacher]."),
        *,
        trust_remote_code: bool = typer.Option(False, help="Run the model repository's own code."),
        overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
        **settings: Any,
    ) -> None:
        """Distill the cached teacher scores into a student reranker."""
        from distill.app import student_tasks as tasks
        from distill.rankers.loading import parse_ranker_spec

        ray_options = {name: settings.pop(name) for name in RAY_OPTIONS}
        tasks.run_train_student(
            student, cache, data, out, split=split, queries=queries, loss=loss, init=init,
            loss_params=tasks.parse_loss_params(loss_param) or None, teacher_scale=_teacher_scale(teacher_scale),
            hard_label_weight=hard_label_weight, hard_label_kind=hard_label_kind,
            feature_rankers=dict(parse_ranker_spec(item) for item in settings.pop("feature_ranker")) or None,
            trust_remote_code=trust_remote_code, overwrite=overwrite,
            ray_options={k: v for k, v in ray_options.items() if v is not None} or None, **settings)

    @app.command("select-student")
    def select_student_command(
        students: list[Path] = typer.Argument(..., help="Student folders trained with --valid-split."),
        out: Path = typer.Option(..., help="Folder to copy the best of them to."),
        overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    ) -> None:
        """Keep the student with the best validation nDCG@10 (e.g. LightGBM at several --qrels-weight)."""
        from distill.app import student_tasks

        student_tasks.run_select_student(students, out, overwrite=overwrite)

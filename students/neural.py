"""What the neural students (cross-encoder, bi-encoder) share: one way to train them.

:class:`NeuralStudent` holds the training settings (``group_config``, ``train_config``) and does all
the two kinds have in common:

- **before training**: refuse a missing loss or start model, divide the teacher's scores by their
  scale (``teacher_scale``: their median per-query std for MarginMSE and MSE, see
  :func:`distill.cache.score_scale.teacher_divisor`), build the loss, giving a listwise loss with no
  temperature one from the teacher's scale (:func:`distill.cache.score_scale.default_loss_params`);
- **training** (:meth:`NeuralStudent.fit_and_save`): groups, the held-out share, the trainer
  (:func:`distill.training.trainer.fit`), the folder written atomically with its manifest;
- **after**: rounds (:mod:`students.rounds`), validation against the starting point (a student
  below the model it started from is reported loudly).

Under ``torchrun`` every rank trains (DDP) and rank 0 alone validates and writes ``out``
(:mod:`distill.training.distributed`, docs/distributed.md).

A kind says only what differs: how its model is built (:meth:`NeuralStudent.build_model`), its group
loss (:meth:`NeuralStudent.group_loss`), what its manifest records of its config and of how it scores
(:meth:`NeuralStudent.scoring_manifest`), and which start it accepts.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from distill.core.errors import ConfigError, InputError
from distill.core.io import atomic_dir
from distill.core.manifest import write_manifest
from distill.core.outputs import check_folder_output
from distill.core.schema import QID
from distill.data.beir import Dataset
from distill.training.config import TrainConfig
from distill.training.distributed import main_writes, on_main
from distill.training.groups import GroupConfig, build_groups, split_groups
from students.student import Distillation, Student, StudentResult, add_to_manifest, build_config

if TYPE_CHECKING:
    from torch import nn

    from distill.training.losses import DistillLoss

log = logging.getLogger(__name__)

#: Losses whose targets are the teacher's score values or margins, which a ranking imported without scores
#: (``distill cache import --ranks-only``) does not have: its scores are derived from ranks. Listwise and rank-based
#: losses (ListNet on the derived targets, ListMLE and PListMLE on the order, ...) take it.
CALIBRATED_LOSSES = ("MSE", "BCE", "MarginMSE")


class NeuralStudent(Student):
    """A student fine-tuned from a transformer ``init`` with a distillation loss (see the module docstring)."""

    def __init__(self, config: Any = None, *, group_config: GroupConfig | None = None,
                 train_config: TrainConfig | None = None) -> None:
        super().__init__(config)
        self.group_config = group_config or GroupConfig()
        self.train_config = train_config or TrainConfig()

    @classmethod
    def from_options(cls, options: Mapping[str, Any], configs: Iterable[object] = ()) -> NeuralStudent:
        """This kind of student with its config, GroupConfig and TrainConfig made of ``options`` (or taken from
        ``configs``; see :func:`students.student.build_config`)."""
        configs = tuple(configs)
        return cls(build_config(cls.config_type, options, configs),
                   group_config=build_config(GroupConfig, options, configs),
                   train_config=build_config(TrainConfig, options, configs))

    def with_training(self, group_config: GroupConfig, train_config: TrainConfig) -> NeuralStudent:
        """This student with other training settings (a round's)."""
        return type(self)(self.config, group_config=group_config, train_config=train_config)

    def continuing(self) -> NeuralStudent:
        """This student for a round that starts from a trained student of its kind (which it takes as it is)."""
        return self

    @property
    def starts_as_init(self) -> bool:
        """Whether the model at ``init`` is the student's starting point as it is, a ranker whose validation
        says where training started (not a teacher cut to fewer layers, whose untrained shape ranks at random)."""
        return True

    def check_options(self, options: Mapping[str, Any]) -> None:
        if options.get("feature_rankers") or options.get("qrels_weight"):
            raise ConfigError("--feature-ranker and --qrels-weight are for the lightgbm student only "
                              "(neural students mix qrels in with --hard-label-weight)")
        if options.get("loss") is None:
            from distill.training.losses import LOSS_NAMES

            raise ConfigError(f"a {self.kind} student needs --loss, one of: {', '.join(LOSS_NAMES)}")
        self.check_start(options.get("init"), bool(options.get("init_from_teacher")))

    @abstractmethod
    def check_start(self, init: str | None, from_teacher: bool) -> None:
        """Refuse a start this kind cannot train from: ``init`` (``--init``), or the teacher (``from_teacher``)."""

    @abstractmethod
    def build_model(self, init: str, trust_remote_code: bool) -> Any:
        """The model to train, loaded from ``init`` and taking ``train_config.max_length`` tokens."""

    @abstractmethod
    def group_loss(self, model: Any, loss: DistillLoss) -> nn.Module:
        """The trainer's loss: scores ``model``'s training groups and applies ``loss`` to them."""

    def manifest_config(self) -> dict[str, Any]:
        """What the manifest's ``config`` records of this kind's own config (between ``init`` and ``loss``)."""
        return {}

    def scoring_manifest(self, teacher_fingerprint: dict[str, Any] | None) -> dict[str, Any]:
        """What the manifest records, beside ``config``, of how the saved model scores, so that every ranker
        loading it scores alike (the cross-encoder: its teacher's passages); none by default."""
        return {}

    def train(self, job: Distillation, out: Path) -> StudentResult:
        from students.rounds import RoundsConfig, train_rounds, validation_result

        if job.loss is None or job.init is None:
            raise ConfigError(f"a {self.kind} student needs a loss and a model to start from (init)")
        check_calibrated(job.loss, job.teacher_fingerprint)
        check_init(job.init, job.trust_remote_code)
        job = replace(job, rounds=job.rounds or RoundsConfig())
        scores, divisor = scaled(job.scores, job.dataset, job.loss, job.teacher_scale)
        run = NeuralRun(self, job, scores, _loss(job, scores))
        if job.rounds.rounds > 1:
            result = train_rounds(run, out)
            main_writes(lambda: add_to_manifest(out, {"teacher_divisor": divisor}))
            return result
        start = on_main(run.start_point)
        path = run.fit(out, job.init)
        # validated once, on rank 0 under torchrun; every rank returns its result
        validation = on_main(lambda: self._finish(job, path, divisor, start))
        return StudentResult(path, None if validation is None else validation_result(validation))

    def _finish(self, job: Distillation, path: Path, divisor: float | None,
                start: dict[str, Any] | None) -> dict[str, Any] | None:
        """Record the teacher divisor in the student's manifest and validate it (see :meth:`Student._validate`)."""
        from students.rounds import warn_below_start

        add_to_manifest(path, {"teacher_divisor": divisor})
        validation = self._validate(job, path, start=start)
        if validation is None:
            return None
        warn_below_start(validation, start, job.init)
        return validation.to_dict()

    def fit_and_save(self, dataset: Dataset, scores: pl.DataFrame, out: str | Path, *, init: str,
                     loss: DistillLoss, teacher_fingerprint: dict[str, Any] | None = None,
                     trust_remote_code: bool = False, overwrite: bool = False) -> Path:
        """Distill the teacher ``scores`` (``qid, docid, score``) of ``dataset``'s queries into this student,
        started from ``init``, with ``loss``, and save it at ``out`` (written atomically, replacing only an
        earlier student of this kind unless ``overwrite``; checkpoints go to ``train_config.checkpoints_for(out)``)."""
        from transformers import set_seed

        from distill.training.trainer import fit, scores_summary

        out = Path(out)
        check_folder_output(out, self.output_kind, overwrite=overwrite)  # before training, not after
        loss.check_group_size(self.group_config.group_size)
        groups = build_groups(dataset, scores, self.group_config, check_group_size=loss.check_group_size)
        train, valid = split_groups(groups, self.train_config.valid_fraction, self.train_config.seed)
        set_seed(self.train_config.seed)
        model = self.build_model(init, trust_remote_code)
        adapter = self.group_loss(model, loss)
        fitted = fit(model, adapter, train, valid, self.train_config, self.train_config.checkpoints_for(out))
        config = {"init": init, **self.manifest_config(), "loss": adapter.get_config_dict(),
                  "group": asdict(self.group_config), "train": asdict(self.train_config)}

        def save() -> None:
            with atomic_dir(out, kind=self.output_kind, overwrite=overwrite) as tmp:
                model.save_pretrained(str(tmp))
                write_manifest(tmp, self.output_kind, config, teacher=teacher_fingerprint,
                               data=scores_summary(dataset, scores, train, valid, out), history=fitted.history,
                               precision=fitted.precision.to_dict(), **self.scoring_manifest(teacher_fingerprint))

        main_writes(save)  # under torchrun every rank holds the same trained model: rank 0 saves it
        log.info("saved the %s student to %s", self.kind, out)
        return out


@dataclass
class NeuralRun:
    """A neural student's distillation once its inputs are checked: the teacher ``scores`` scaled, the loss built."""

    student: NeuralStudent
    job: Distillation
    scores: pl.DataFrame
    loss: DistillLoss

    def fit(self, out: Path, init: str, student: NeuralStudent | None = None) -> Path:
        """Train ``student`` (this run's, unless given: a round's) from ``init`` into ``out``."""
        return (student or self.student).fit_and_save(
            self.job.dataset, self.scores, out, init=init, loss=self.loss,
            teacher_fingerprint=self.job.teacher_fingerprint, trust_remote_code=self.job.trust_remote_code,
            overwrite=self.job.overwrite)

    def start_point(self) -> dict[str, Any] | None:
        """The validation of the model the student starts from, when that is a ranker folder (see
        :attr:`NeuralStudent.starts_as_init`)."""
        validation, init = self.job.validation, self.job.init
        if validation is None or not self.student.starts_as_init or not Path(init).is_dir():
            return None
        start = validation.score_folder(init).to_dict()
        log.info("starting point %s: validation %s %.4f", init, validation.metric, start["value"])
        return start


def check_init(init: str, trust_remote_code: bool) -> None:
    """Fail before any training when ``init`` is no model: a missing path that is no hub id either,
    or a folder or id whose config transformers cannot read (the loaders would raise a bare
    ValueError or OSError after the groups are built)."""
    from transformers import AutoConfig

    from teachers.base import check_model_reference

    check_model_reference(init)
    try:
        AutoConfig.from_pretrained(init, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise InputError(f"not a model to start from (--init): {' '.join(str(err).split())}", path=init) from err


def check_calibrated(loss: str | DistillLoss, teacher_fingerprint: dict[str, Any] | None) -> None:
    """Refuse a loss of :data:`CALIBRATED_LOSSES` (alone or in a mixture) on a ranks-only teacher's scores."""
    from distill.cache.importing import is_ranks_only

    if not is_ranks_only(teacher_fingerprint):
        return
    names = [loss] if isinstance(loss, str) else [part.name for part in getattr(loss, "losses", [loss])]
    refused = [name for name in names if name.lower() in (n.lower() for n in CALIBRATED_LOSSES)]
    if refused:
        raise ConfigError(f"{refused[0]} needs calibrated teacher scores, but this cache's teacher only ranked "
                          f"(imported with --ranks-only); use a listwise loss such as ListNet, ListMLE or PListMLE",
                          field="loss")


def scaled(scores: pl.DataFrame, dataset: Dataset, loss: str | DistillLoss,
           teacher_scale: float | str | None) -> tuple[pl.DataFrame, float | None]:
    """The teacher scores divided by ``teacher_scale`` (``"auto"``: see
    :func:`~distill.cache.score_scale.teacher_divisor`), and the divisor (None: left raw)."""
    from distill.cache.score_scale import score_scale, teacher_divisor
    from distill.core.schema import SCORE

    if teacher_scale == "auto":
        if not isinstance(loss, str):
            return scores, None
        teacher_scale = teacher_divisor(loss, score_scale(_training_scores(scores, dataset)))
    if teacher_scale is None:
        return scores, None
    if not float(teacher_scale) > 0:
        raise ConfigError(f"the teacher scale must be > 0, got {teacher_scale}", field="teacher_scale")
    log.info("%s: teacher scores divided by %.4g (their median per-query std; --teacher-scale none keeps them raw)",
             loss if isinstance(loss, str) else type(loss).__name__, teacher_scale)
    return scores.with_columns(pl.col(SCORE) / float(teacher_scale)), float(teacher_scale)


def named_loss(loss: str | DistillLoss, params: dict[str, Any] | None = None, hard_label_weight: float = 0.0,
               hard_label_kind: str = "bce") -> DistillLoss:
    """``loss`` itself, or the registered loss of that name built with ``params`` and a hard-label term."""
    from distill.training.losses import build_loss

    if not isinstance(loss, str):
        return loss
    return build_loss(loss, hard_label_weight=hard_label_weight, hard_label_kind=hard_label_kind, **(params or {}))


def _loss(job: Distillation, scores: pl.DataFrame) -> DistillLoss:
    """``job``'s loss object: its ``loss`` itself, or the registered one built with its parameters (a listwise
    loss given no temperature gets one from the teacher's scale over the training queries)."""
    if not isinstance(job.loss, str):
        if job.loss_params or job.hard_label_weight:
            raise ConfigError("loss parameters and a hard-label weight go with a loss name, not a loss object")
        return job.loss
    from distill.cache.score_scale import default_loss_params, score_scale

    params = job.loss_params or {}
    chosen = default_loss_params(job.loss, params, score_scale(_training_scores(scores, job.dataset)))
    if chosen != params:
        log.info("%s: temperature %.4g from the teacher's median per-query score spread (set one with "
                 "--loss-param temperature=T)", job.loss, chosen["temperature"])
    return named_loss(job.loss, chosen, job.hard_label_weight, job.hard_label_kind)


def _training_scores(scores: pl.DataFrame, dataset: Dataset) -> pl.DataFrame:
    """The scores of ``dataset``'s queries (a cache may hold other splits' too)."""
    return scores.join(dataset.queries.select(QID), on=QID, how="semi")

"""``train_student``: one public function that distills cached teacher scores into any student.

It takes Python objects (a :class:`~distill.data.beir.Dataset`, a scores frame, configs, a loss
name or a loss object) and adds to the per-kind trainers (:mod:`students.cross_encoder`,
:mod:`students.bi_encoder`, :mod:`students.lightgbm`) what a user should get by default:

- **a temperature from the teacher's scale** for a listwise loss given none
  (:func:`distill.cache.score_scale.default_loss_params`);
- **rounds** (:class:`RoundsConfig`): round ``r`` is one more epoch starting from round
  ``r - 1``'s model, over negatives sampled afresh (group seed ``seed + r - 1``), at the
  round's learning rate. Each finished round is a folder in ``<out>.rounds/``, validated as
  it ends; a rerun with the same settings skips finished rounds and resumes the round in
  flight from its last checkpoint (``train_config.eval_steps`` sets how often one is
  written). The best round on validation becomes ``out``;
- **validation and collapse detection** (:mod:`students.validation`): the saved student
  reranks the validation queries' first-stage candidates; a student with near-constant
  scores or below the first stage raises :class:`~students.validation.StudentCollapseError`
  unless ``allow_collapse``, and one below its own starting point is reported loudly.

``distill train-student`` is a thin wrapper around it.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import polars as pl

from distill.core.errors import ConfigError, InputError
from distill.core.io import atomic_dir, write_json_atomic
from distill.core.manifest import frame_hash
from distill.core.outputs import check_folder, check_folder_output
from distill.core.recorded_paths import rebase
from distill.core.schema import DOCID, QID
from distill.data.beir import Dataset
from distill.training.groups import GroupConfig
from students.validation import Validation, ValidationResult, check_collapse

if TYPE_CHECKING:
    from distill.training.losses import DistillLoss
    from distill.training.trainer import TrainConfig
    from students.lightgbm import LightGBMConfig

log = logging.getLogger(__name__)

STUDENT_KINDS = ("cross-encoder", "bi-encoder", "lightgbm")
OUTPUT_KINDS = tuple(f"{kind}-student" for kind in STUDENT_KINDS)  # their folders' manifest kinds
LrSchedule = Literal["constant", "step", "halving"]
LR_SCHEDULES = ("constant", "step", "halving")


@dataclass
class RoundsConfig:
    """How many rounds, and the peak learning rate of each (within a round: warmup, then linear decay).

    ``constant`` (default): the same peak lr every round, best on valid in the loss comparison
    (docs/results/losses.md, 4 rounds); ``step``: the given lr in round 1 and half of it in every
    later round, the schedule of the hand-run recipe that took the SciFact cross-encoder student
    from 88% to 98.6% of its teacher in six rounds; ``halving``: halved again every round.
    """

    rounds: int = 1
    lr_schedule: LrSchedule = "constant"

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1, got {self.rounds}", field="rounds")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}",
                              field="lr_schedule")

    def lr(self, base: float, round_: int) -> float:
        """The peak learning rate of round ``round_`` (1-based) for a base rate ``base``."""
        if self.lr_schedule == "constant" or round_ == 1:
            return base
        return base / 2 if self.lr_schedule == "step" else base / 2 ** (round_ - 1)


@dataclass
class StudentResult:
    """Where the student is, what validation said (None without validation), which round was kept."""

    path: Path
    validation: ValidationResult | None
    kept_round: int | None = None
    rounds: list[dict[str, Any]] | None = None


def train_student(
    kind: str,
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

    Neural students (``cross-encoder``, ``bi-encoder``) need ``loss`` (a registered name, e.g.
    ``"MarginMSE"``, or a :class:`distill.training.losses.DistillLoss`) and ``init`` (a model path or id;
    for a cross-encoder with ``init_from_teacher_layers=N``, the teacher to cut to N layers).
    ``bi_encoder`` holds ``similarity``, ``scale``, ``learn_scale``; ``lightgbm`` the
    :class:`students.lightgbm.LightGBMConfig`. With ``validation``, the student is validated
    and checked for collapse. ``teacher_scale``: what a regression loss's teacher scores are
    divided by (``"auto"``: their median per-query std for MarginMSE and MSE, see
    :func:`distill.cache.score_scale.teacher_divisor`; None: raw scores). ``out`` replaces only an earlier
    student of the same kind, unless ``overwrite`` (see :mod:`distill.core.outputs`).
    """
    from distill.training.trainer import TrainConfig

    if kind not in STUDENT_KINDS:
        raise ConfigError(f"student must be one of {', '.join(STUDENT_KINDS)}, got {kind!r}", field="student")
    out = Path(out)
    check_folder_output(out, f"{kind}-student", overwrite=overwrite)
    rounds = rounds or RoundsConfig()
    if kind == "lightgbm":
        result = StudentResult(_train_lightgbm(dataset, scores, out, lightgbm, teacher_fingerprint, scores_source,
                                               rounds, overwrite), None)
    else:
        if loss is None or init is None:
            raise ConfigError(f"a {kind} student needs a loss and a model to start from (init)")
        _check_init(init, trust_remote_code)
        scores, divisor = _scaled(scores, dataset, loss, teacher_scale)
        neural = _Neural(kind, dataset, scores, _loss(loss, loss_params, hard_label_weight, hard_label_kind, scores,
                                                      dataset),
                         group_config or GroupConfig(), train_config or TrainConfig(), init, init_from_teacher_layers,
                         layer_choice, bi_encoder or {}, teacher_fingerprint, trust_remote_code, overwrite)
        if rounds.rounds > 1:
            result = _train_rounds(neural, out, rounds, validation)
            _record(out, {"teacher_divisor": divisor})
            return _finish(result, kind, allow_collapse)
        start = _start_point(neural, validation)
        result = StudentResult(neural.train(out, init, init_from_teacher_layers, neural.train_config,
                                            neural.group_config), None)
        _record(out, {"teacher_divisor": divisor})
    if validation is not None:
        result.validation = validation.score_folder(result.path)
        _record(result.path, {"validation": result.validation.to_dict(),
                              **({"start": start} if kind != "lightgbm" else {})})
        if kind != "lightgbm":
            _warn_below_start(result.validation, start, init)
    return _finish(result, kind, allow_collapse)


def _check_init(init: str, trust_remote_code: bool) -> None:
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


def _start_point(neural: _Neural, validation: Validation | None) -> dict[str, Any] | None:
    """The validation of the model a neural student starts from, when that is a usable ranker folder
    (not a teacher cut to fewer layers, whose untrained shape ranks at random)."""
    if validation is None or neural.layers is not None or not Path(neural.init).is_dir():
        return None
    start = validation.score_folder(neural.init).to_dict()
    log.info("starting point %s: validation %s %.4f", neural.init, validation.metric, start["value"])
    return start


def _warn_below_start(result: ValidationResult, start: dict[str, Any] | None, init: str) -> None:
    if start is not None and result.value < start["value"]:
        log.warning("!" * 72)
        log.warning("the student ended BELOW its starting point on validation (%s %.4f vs %.4f at the start, %s): "
                    "training made it worse", result.metric, result.value, start["value"], init)
        log.warning("!" * 72)


def _finish(result: StudentResult, kind: str, allow_collapse: bool) -> StudentResult:
    if result.validation is not None:
        check_collapse(result.validation, f"the {kind} student at {result.path}", allow=allow_collapse)
    return result


def _scaled(scores: pl.DataFrame, dataset: Dataset, loss,
            teacher_scale: float | str | None) -> tuple[pl.DataFrame, float | None]:
    """The teacher scores divided by ``teacher_scale`` (``"auto"``: see
    :func:`~distill.cache.score_scale.teacher_divisor`), and the divisor (None: left raw)."""
    from distill.cache.score_scale import score_scale, teacher_divisor
    from distill.core.schema import SCORE

    if teacher_scale == "auto":
        if not isinstance(loss, str):
            return scores, None
        teacher_scale = teacher_divisor(loss, score_scale(scores.join(dataset.queries.select(QID), on=QID,
                                                                      how="semi")))
    if teacher_scale is None:
        return scores, None
    if not float(teacher_scale) > 0:
        raise ConfigError(f"the teacher scale must be > 0, got {teacher_scale}", field="teacher_scale")
    log.info("%s: teacher scores divided by %.4g (their median per-query std; --teacher-scale none keeps them raw)",
             loss if isinstance(loss, str) else type(loss).__name__, teacher_scale)
    return scores.with_columns(pl.col(SCORE) / float(teacher_scale)), float(teacher_scale)


def _loss(loss, params, hard_label_weight, hard_label_kind, scores, dataset):
    """A loss object: ``loss`` itself, or the registered ``loss`` built with ``params`` (a listwise
    loss given no temperature gets one from the teacher's scale over ``dataset``'s queries)."""
    from distill.training.losses import build_loss

    if not isinstance(loss, str):
        if params or hard_label_weight:
            raise ConfigError("loss parameters and a hard-label weight go with a loss name, not a loss object")
        return loss
    from distill.cache.score_scale import default_loss_params, score_scale

    params = params or {}
    chosen = default_loss_params(loss, params, score_scale(scores.join(dataset.queries.select(QID), on=QID,
                                                                       how="semi")))
    if chosen != params:
        log.info("%s: temperature %.4g from the teacher's median per-query score spread (set one with "
                 "--loss-param temperature=T)", loss, chosen["temperature"])
    return build_loss(loss, hard_label_weight=hard_label_weight, hard_label_kind=hard_label_kind, **chosen)


@dataclass
class _Neural:
    """Everything a neural student's trainer needs, so a round only says what changes."""

    kind: str
    dataset: Dataset
    scores: pl.DataFrame
    loss: Any
    group_config: GroupConfig
    train_config: TrainConfig
    init: str
    layers: int | None
    layer_choice: str
    bi_encoder: dict[str, Any]
    teacher_fingerprint: dict[str, Any] | None
    trust_remote_code: bool
    overwrite: bool = False  # an ``out`` that is no earlier student of this kind is replaced

    def train(self, out: Path, init: str, layers: int | None, train_config: TrainConfig,
              group_config: GroupConfig) -> Path:
        common = dict(group_config=group_config, train_config=train_config, loss_name=self.loss,
                      teacher_fingerprint=self.teacher_fingerprint, trust_remote_code=self.trust_remote_code,
                      overwrite=self.overwrite)
        if self.kind == "cross-encoder":
            from students.cross_encoder import train_cross_encoder_student

            return train_cross_encoder_student(self.dataset, self.scores, out, init=init,
                                               init_from_teacher_layers=layers, layer_choice=self.layer_choice,
                                               **common)
        from students.bi_encoder import train_bi_encoder_student

        return train_bi_encoder_student(self.dataset, self.scores, out, init=init, **self.bi_encoder, **common)

    def settings(self, rounds: RoundsConfig) -> dict[str, Any]:
        """What a finished round depends on: a rerun with other settings must not reuse it."""
        train = {k: v for k, v in asdict(self.train_config).items()
                 if k not in ("resume_from_checkpoint", "checkpoints_dir", "logging_steps", "save_total_limit")}
        return {"kind": self.kind, "init": self.init, "layers": self.layers, "layer_choice": self.layer_choice,
                "loss": self.loss.get_config_dict(), "group": asdict(self.group_config), "train": train,
                "bi_encoder": self.bi_encoder, "lr_schedule": rounds.lr_schedule,
                # the training queries' scores only: a cache that gains other splits' scores (a teacher's
                # valid/test reference) still resumes its rounds
                "scores_hash": frame_hash(self.scores.join(self.dataset.queries.select(QID), on=QID, how="semi")
                                          .sort([QID, DOCID])),
                "queries": frame_hash(self.dataset.queries.sort(QID))}


def _train_rounds(neural: _Neural, out: Path, rounds: RoundsConfig, validation: Validation | None) -> StudentResult:
    work = out.with_name(f"{out.name}.rounds")
    record_path = work / "rounds.json"
    settings = json.loads(json.dumps(neural.settings(rounds), default=str))
    record = {"settings": settings, "start": None, "rounds": {}}
    if record_path.exists():
        earlier = json.loads(record_path.read_text(encoding="utf-8"))
        if earlier.get("settings") != settings:
            raise ConfigError(f"{work} holds rounds trained with other settings; use another --out or delete it",
                              path=record_path)
        record = earlier
        log.info("continuing the rounds in %s (%d finished)", work, len(record["rounds"]))
    work.mkdir(parents=True, exist_ok=True)
    if record["start"] is None:
        record["start"] = _start_point(neural, validation)
    previous = neural.init
    for r in range(1, rounds.rounds + 1):
        folder = work / f"round-{r}"
        if not folder.exists():
            checkpoints = work / f"round-{r}.checkpoints"
            resume = True if any(checkpoints.glob("checkpoint-*")) else None
            lr = rounds.lr(neural.train_config.lr, r)
            log.info("round %d of %d: lr %.3g, negatives seed %d%s", r, rounds.rounds, lr,
                     neural.group_config.seed + r - 1, ", resuming from its last checkpoint" if resume else "")
            neural.train(folder, previous, neural.layers if r == 1 else None,
                         replace(neural.train_config, lr=lr, checkpoints_dir=str(checkpoints),
                                 resume_from_checkpoint=resume),
                         replace(neural.group_config, seed=neural.group_config.seed + r - 1))
            shutil.rmtree(checkpoints, ignore_errors=True)
        if str(r) not in record["rounds"]:
            scored = validation.score_folder(folder).to_dict() if validation is not None else {}
            record["rounds"][str(r)] = {"round": r, "lr": rounds.lr(neural.train_config.lr, r), **scored}
            write_json_atomic(record_path, record)
            if validation is not None:
                log.info("round %d: validation %s %.4f (first stage %.4f)", r, validation.metric, scored["value"],
                         scored["first_stage"])
        previous = str(folder)
    history = [record["rounds"][str(r)] for r in range(1, rounds.rounds + 1)]
    kept = max(history, key=lambda h: (h["value"], h["round"]))["round"] if validation is not None else rounds.rounds
    with atomic_dir(out, kind=f"{neural.kind}-student", overwrite=neural.overwrite) as tmp:
        shutil.copytree(work / f"round-{kept}", tmp, dirs_exist_ok=True)
    _rebase_data(out, work / f"round-{kept}")
    best = ValidationResult(**{k: history[kept - 1][k] for k in ValidationResult.__dataclass_fields__}) \
        if validation is not None else None
    _record(out, {"rounds": {"lr_schedule": rounds.lr_schedule, "history": history, "kept": kept,
                             "start": record["start"]},
                  **({"validation": best.to_dict()} if best else {})})
    if best is not None:
        log.info("kept round %d of %d (validation %s %.4f)", kept, rounds.rounds, best.metric, best.value)
        _warn_below_start(best, record["start"], neural.init)
    return StudentResult(out, best, kept, history)


def _record(folder: Path, extra: dict[str, Any]) -> None:
    """Add ``extra`` to the student's ``distill.json`` manifest (LightGBM's too)."""
    path = folder / "distill.json"
    manifest = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    write_json_atomic(path, {**manifest, **extra})


def _rebase_data(folder: Path, source: Path) -> None:
    """A student copied from ``source`` to ``folder`` records its training data relative to ``folder``."""
    path = folder / "distill.json"
    data = json.loads(path.read_text(encoding="utf-8")).get("data") if path.exists() else None
    if isinstance(data, dict) and data.get("path"):
        _record(folder, {"data": rebase(data, folder, source)})


def _train_lightgbm(dataset: Dataset, scores: pl.DataFrame, out: Path, config: LightGBMConfig | None,
                    teacher_fingerprint, scores_source, rounds: RoundsConfig, overwrite: bool) -> Path:
    from students.lightgbm import train_lightgbm_student

    if rounds.rounds > 1:
        raise ConfigError("rounds are for neural students; LightGBM stops early on its own validation")

    candidates = scores.select(QID, DOCID).join(dataset.queries.select(QID), on=QID, how="semi")
    return train_lightgbm_student(dataset, candidates, scores, out, config, teacher_fingerprint=teacher_fingerprint,
                                  scores_source=scores_source, overwrite=overwrite)


def select_student(folders: list[str | Path], out: str | Path, *, overwrite: bool = False) -> Path:
    """Copy to ``out`` the student of ``folders`` with the best validation in its manifest (trained with
    a validation split), and record the choice there: e.g. LightGBM students of several qrels weights.
    ``out`` replaces only an earlier student, unless ``overwrite``; it may not be one of ``folders``."""
    check_folder(out, OUTPUT_KINDS, overwrite=overwrite, inputs=folders)
    scored = {}
    for folder in map(Path, folders):
        path = folder / "distill.json"
        validation = json.loads(path.read_text(encoding="utf-8")).get("validation") if path.exists() else None
        if validation is None:
            raise ConfigError("this student was trained without --valid-split: nothing to choose by", path=folder)
        scored[str(folder)] = validation
    best = max(scored, key=lambda f: (scored[f]["value"], -list(scored).index(f)))
    out = Path(out)
    with atomic_dir(out, kind=OUTPUT_KINDS, overwrite=overwrite) as tmp:
        shutil.copytree(best, tmp, dirs_exist_ok=True)
    _rebase_data(out, Path(best))
    _record(out, {"chosen_from": {f: v["value"] for f, v in scored.items()}, "chosen": best})
    log.info("kept %s: validation %s %.4f (%s)", best, scored[best]["metric"], scored[best]["value"],
             ", ".join(f"{Path(f).name} {v['value']:.4f}" for f, v in scored.items()))
    return out

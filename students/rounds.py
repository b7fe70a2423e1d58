"""Rounds of a neural student: round ``r`` is one more epoch starting from round ``r - 1``'s model, over
negatives sampled afresh (group seed ``seed + r - 1``), at the round's learning rate (:class:`RoundsConfig`).

Each finished round is a folder in ``<out>.rounds/``, validated as it ends; a rerun with the same
settings skips finished rounds and resumes the round in flight from its last checkpoint
(``train_config.eval_steps`` sets how often one is written). The best round on validation becomes
``out``. :meth:`students.neural.NeuralStudent.train` runs them when ``rounds > 1``.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from distill.core.errors import ConfigError
from distill.core.io import atomic_dir, write_json_atomic
from distill.core.manifest import frame_hash
from distill.core.schema import DOCID, QID
from distill.training.distributed import main_writes, on_main
from students.student import StudentResult, add_to_manifest, rebase_data
from students.validation import ValidationResult

if TYPE_CHECKING:
    from students.neural import NeuralRun

log = logging.getLogger(__name__)

LrSchedule = Literal["constant", "step", "halving"]
LR_SCHEDULES = ("constant", "step", "halving")
# TrainConfig fields that say how a run is kept and logged, not what it learns: a rerun may change them
_BOOKKEEPING = ("resume_from_checkpoint", "checkpoints_dir", "logging_steps", "save_total_limit")


@dataclass
class RoundsConfig:
    """How many rounds, and the peak learning rate of each (within a round: warmup, then linear decay).

    ``constant`` (default): the same peak lr every round, best on valid in the loss comparison
    (docs/results/losses.md, 4 rounds); ``step``: the given lr in round 1 and half of it in every
    later round, the schedule of the hand-run recipe that took the SciFact cross-encoder student
    from 88% to 98.6% of its teacher in six rounds; ``halving``: halved again every round.
    A field's metadata holds its ``distill train-student`` help (:mod:`distill.app.options`).
    """

    rounds: int = field(default=1, metadata={"min": 1, "help": (
        "Neural students: rounds of one epoch each, every round from the previous one with fresh negatives; the best "
        "on validation is kept.")})
    lr_schedule: LrSchedule = field(default="constant", metadata={"help": (
        "Peak lr across rounds: constant (--lr every round) | step (--lr, then half of it) | halving (halved every "
        "round).")})

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


def train_rounds(run: NeuralRun, out: Path) -> StudentResult:
    """Train ``run``'s rounds in ``<out>.rounds/`` (continuing the finished ones there) and copy the best to ``out``.

    Under ``torchrun`` every rank trains each round; rank 0 alone reads and writes the record, validates
    and copies the best round, and broadcasts what the others need to follow (the record)."""
    job = run.job
    work = out.with_name(f"{out.name}.rounds")
    record = on_main(lambda: _open_record(run, work))
    previous = job.init
    for r in range(1, job.rounds.rounds + 1):
        folder = work / f"round-{r}"
        if not on_main(folder.exists):
            _train_round(run, r, previous, folder)
        if str(r) not in record["rounds"]:
            record = on_main(partial(_validate_round, run, r, folder, record, work / "rounds.json"))
        previous = str(folder)
    history = [record["rounds"][str(r)] for r in range(1, job.rounds.rounds + 1)]
    validation = job.validation
    kept = job.rounds.rounds if validation is None else max(history, key=lambda h: (h["value"], h["round"]))["round"]
    best = validation_result(history[kept - 1]) if validation is not None else None
    main_writes(lambda: _keep(run, work / f"round-{kept}", out, history, kept, record["start"], best))
    return StudentResult(out, best, kept, history)


def validation_result(recorded: dict[str, Any]) -> ValidationResult:
    """The :class:`ValidationResult` of a recorded (or broadcast) validation dict, less its derived keys."""
    return ValidationResult(**{k: recorded[k] for k in ValidationResult.__dataclass_fields__})


def _open_record(run: NeuralRun, work: Path) -> dict[str, Any]:
    """The rounds record in ``work`` (created, with the starting point's validation, when new)."""
    record = _record(work / "rounds.json", json.loads(json.dumps(_settings(run), default=str)))
    work.mkdir(parents=True, exist_ok=True)
    if record["start"] is None:
        record["start"] = run.start_point()
    return record


def _keep(run: NeuralRun, chosen: Path, out: Path, history: list[dict[str, Any]], kept: int,
          start: dict[str, Any] | None, best: ValidationResult | None) -> None:
    """Copy the ``kept`` round's student at ``chosen`` to ``out`` and record the rounds in its manifest."""
    job = run.job
    with atomic_dir(out, kind=run.student.output_kind, overwrite=job.overwrite) as tmp:
        shutil.copytree(chosen, tmp, dirs_exist_ok=True)
    rebase_data(out, chosen)
    add_to_manifest(out, {"rounds": {"lr_schedule": job.rounds.lr_schedule, "history": history, "kept": kept,
                                     "start": start},
                          **({"validation": best.to_dict()} if best else {})})
    if best is not None:
        log.info("kept round %d of %d (validation %s %.4f)", kept, job.rounds.rounds, best.metric, best.value)
        warn_below_start(best, start, job.init)


def _settings(run: NeuralRun) -> dict[str, Any]:
    """What a finished round depends on: a rerun with other settings must not reuse it."""
    student, job = run.student, run.job
    train = {k: v for k, v in asdict(student.train_config).items() if k not in _BOOKKEEPING}
    return {"kind": student.kind, "init": job.init, "config": asdict(student.config),
            "loss": run.loss.get_config_dict(), "group": asdict(student.group_config), "train": train,
            "lr_schedule": job.rounds.lr_schedule,
            # the training queries' scores only: a cache that gains other splits' scores (a teacher's
            # valid/test reference) still resumes its rounds
            "scores_hash": frame_hash(run.scores.join(job.dataset.queries.select(QID), on=QID, how="semi")
                                      .sort([QID, DOCID])),
            "queries": frame_hash(job.dataset.queries.sort(QID))}


def _record(path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The rounds record at ``path``: an earlier one of the same ``settings``, else a fresh one."""
    if not path.exists():
        return {"settings": settings, "start": None, "rounds": {}}
    earlier = json.loads(path.read_text(encoding="utf-8"))
    if earlier.get("settings") != settings:
        raise ConfigError(f"{path.parent} holds rounds trained with other settings; use another --out or delete it",
                          path=path)
    log.info("continuing the rounds in %s (%d finished)", path.parent, len(earlier["rounds"]))
    return earlier


def _train_round(run: NeuralRun, r: int, previous: str, folder: Path) -> None:
    """Round ``r`` from the model at ``previous`` into ``folder``, resuming from its checkpoints when it has some."""
    student, rounds = run.student, run.job.rounds
    checkpoints = folder.with_name(f"{folder.name}.checkpoints")
    resume = True if on_main(lambda: any(checkpoints.glob("checkpoint-*"))) else None
    lr = rounds.lr(student.train_config.lr, r)
    seed = student.group_config.seed + r - 1
    log.info("round %d of %d: lr %.3g, negatives seed %d%s", r, rounds.rounds, lr, seed,
             ", resuming from its last checkpoint" if resume else "")
    this_round = (student if r == 1 else student.continuing()).with_training(
        replace(student.group_config, seed=seed),
        replace(student.train_config, lr=lr, checkpoints_dir=str(checkpoints), resume_from_checkpoint=resume))
    run.fit(folder, previous, this_round)
    main_writes(lambda: shutil.rmtree(checkpoints, ignore_errors=True))


def _validate_round(run: NeuralRun, r: int, folder: Path, record: dict[str, Any], path: Path) -> dict[str, Any]:
    """``record`` with round ``r``'s validation added, written to ``path``."""
    validation = run.job.validation
    scored = validation.score_folder(folder).to_dict() if validation is not None else {}
    record["rounds"][str(r)] = {"round": r, "lr": run.job.rounds.lr(run.student.train_config.lr, r), **scored}
    if validation is not None:
        log.info("round %d: validation %s %.4f (first stage %.4f)", r, validation.metric, scored["value"],
                 scored["first_stage"])
    write_json_atomic(path, record)
    return record


def warn_below_start(result: ValidationResult, start: dict[str, Any] | None, init: str) -> None:
    """Say loudly that a student ended below the model it started from on validation."""
    if start is not None and result.value < start["value"]:
        log.warning("!" * 72)
        log.warning("the student ended BELOW its starting point on validation (%s %.4f vs %.4f at the start, %s): "
                    "training made it worse", result.metric, result.value, start["value"], init)
        log.warning("!" * 72)

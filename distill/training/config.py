"""The neural trainers' settings, importable without torch.

:class:`TrainConfig` lives here rather than in :mod:`distill.training.trainer` (which imports torch)
so that the command line can read its defaults for its options and help text without loading torch
(``distill --help`` must stay light); the trainer imports it from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from distill.core.errors import ConfigError

Precision = Literal["auto", "fp32", "bf16", "fp16"]


@dataclass
class TrainConfig:
    """Optimisation settings shared by the neural students and train-teacher.

    ``batch_size`` counts queries (groups), not pairs: a batch scores ``batch_size x L``
    documents. ``precision="auto"`` is bf16 (fp16 where bf16 is unsupported) on CUDA, and on
    CPUs bf16 where measured clearly faster, else fp32 (:mod:`distill.training.precision`).
    ``valid_fraction`` holds out queries whose loss is evaluated every ``eval_steps`` steps
    (every epoch when None) and picks the best checkpoint.
    ``checkpoints_dir=None`` puts the trainer's checkpoints in ``<out>.checkpoints``;
    ``resume_from_checkpoint`` is a checkpoint folder, or True for the latest one there.
    A field's metadata holds its ``distill train-student`` help (:mod:`distill.app.options`), and its option's
    name where that is not the field's.
    """

    epochs: float = field(default=1.0, metadata={"help": "Epochs (neural students; per round with --rounds)."})
    lr: float = field(default=2e-5, metadata={"help": "Learning rate."})
    batch_size: int = field(default=8, metadata={"help": "Queries per batch (neural students).", "min": 1})
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_length: int = field(default=256, metadata={"help": "Tokens per text or pair (neural students).", "min": 8})
    seed: int = field(default=42, metadata={"help": "Seed of sampling, held-out queries and initialisation."})
    precision: Precision = field(default="auto", metadata={"help": (
        "auto (bf16 on CUDA; on CPUs bf16 where one timed step is >= 1.2x faster than fp32, else fp32) | fp32 | bf16 "
        "| fp16.")})
    dropout: float | None = field(default=None, metadata={"help": (
        "The probability of every dropout layer while training, attention's too [the model's own].")})
    valid_fraction: float = field(default=0.0, metadata={"help": "Held-out training queries for the loss."})
    eval_steps: int | None = field(default=None, metadata={"option": "checkpoint_steps", "min": 1, "help": (
        "Neural students: save a checkpoint (and evaluate, with --valid-fraction) every N steps [once an epoch].")})
    logging_steps: int = 50
    save_total_limit: int = 2
    resume_from_checkpoint: str | bool | None = None
    checkpoints_dir: str | None = None

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.lr <= 0 or self.batch_size < 1 or self.max_length < 8:
            raise ConfigError(
                f"need epochs > 0, lr > 0, batch size >= 1 and max length >= 8; got epochs={self.epochs}, "
                f"lr={self.lr}, batch_size={self.batch_size}, max_length={self.max_length}"
            )
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}", field="--dropout")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"warmup ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")

    def checkpoints_for(self, out: Path) -> Path:
        """The folder of the trainer's checkpoints for a model saved at ``out``."""
        return Path(self.checkpoints_dir) if self.checkpoints_dir else out.with_name(f"{out.name}.checkpoints")

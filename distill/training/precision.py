"""Which precision a training run computes in, chosen by measurement on CPUs.

``precision="auto"`` is bf16 on CUDA (fp16 on GPUs without bf16). On a CPU with native bf16
(AVX-512 BF16 or AMX) it times one training step (forward and backward over a few training
groups, after an untimed warm-up) in fp32 and under bf16 autocast, and keeps bf16 only when it
is at least :data:`MIN_SPEEDUP` times faster (docs/results/train_precision.md: what that gained,
and what it cost in validation nDCG@10, on the demo's students). CPUs without
native bf16 emulate it, slower than fp32, so they are never timed. An explicit precision is
used as given. The choice and its timings go to the model's manifest.

Under ``torchrun`` only rank 0 times and chooses; :func:`distill.training.trainer.fit` broadcasts its
choice, so that no two ranks train in different precisions (:mod:`distill.training.distributed`).

The timing runs under a forked RNG, so dropout draws during it leave training's random
stream as it would be without it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from time import process_time
from typing import TYPE_CHECKING, Any

import torch

from distill.core.hardware import native_precisions

if TYPE_CHECKING:
    from distill.training.groups import Group

log = logging.getLogger(__name__)

SAMPLE_GROUPS = 4  # training groups in the timed step (each with all its documents)
# bf16 changes every activation's rounding: only a clear gain is worth it, not a tie within noise
MIN_SPEEDUP = 1.2


@dataclass
class TrainPrecision:
    """The precision a run trains in, what was asked for, and why (CPU seconds of one timed step)."""

    chosen: str
    requested: str
    reason: str
    cpu_seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_train_precision(requested: str, model: torch.nn.Module, sample: list[Group]) -> TrainPrecision:
    """``requested`` unless it is "auto"; then the fastest native precision (see the module docstring)."""
    if requested != "auto":
        return TrainPrecision(requested, requested, "given")
    native = native_precisions("cuda" if torch.cuda.is_available() else "cpu")
    if not native:
        return TrainPrecision("fp32", requested, "no native reduced precision on this machine")
    if torch.cuda.is_available():
        return TrainPrecision(native[0], requested, "CUDA")
    seconds = {name: step_seconds(model, sample, name) for name in ("fp32", *native)}
    best = min(native, key=seconds.__getitem__)
    speedup = seconds["fp32"] / max(seconds[best], 1e-9)
    chosen = best if speedup >= MIN_SPEEDUP else "fp32"
    choice = TrainPrecision(chosen, requested, f"{best} {speedup:.2f}x fp32 on one step (kept at >= {MIN_SPEEDUP}x)",
                            {k: round(v, 4) for k, v in seconds.items()})
    log.info("training precision %s: one step of %d groups took %s CPU s", chosen, len(sample),
             ", ".join(f"{k} {v:.2f}" for k, v in seconds.items()))
    return choice


def step_seconds(model: torch.nn.Module, sample: list[Group], precision: str, repeats: int = 2) -> float:
    """CPU seconds of one forward and backward pass over ``sample`` in ``precision`` (the fastest of
    ``repeats`` after a warm-up); gradients are cleared and the model's mode restored after."""
    was_training = model.training
    model.train()
    times = []
    with torch.random.fork_rng(devices=[]):
        for _ in range(repeats + 1):
            start = process_time()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = _forward(model, sample)
            out.float().sum().backward()
            times.append(process_time() - start)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return min(times[1:])


def _forward(model: torch.nn.Module, sample: list[Group]) -> torch.Tensor:
    """The model's scores (a cross-encoder) or embeddings (a bi-encoder) of the sample's texts,
    prepared as the training losses prepare them (:mod:`distill.training.trainer`)."""
    from sentence_transformers.cross_encoder import CrossEncoder

    cross = isinstance(model, CrossEncoder)
    texts = [(g.query, d) for g in sample for d in g.docs] if cross else [t for g in sample for t in (g.query, *g.docs)]
    tokens = model.preprocess(texts)
    tokens = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in tokens.items()}
    return model(tokens)["scores" if cross else "sentence_embedding"]

"""Which floating-point precision a teacher computes in, and the check that earns a reduced one.

``dtype="auto"`` asks for the fastest precision the device runs natively: bf16 on CUDA
(fp16 on GPUs without bf16), bf16 on CPUs with AMX/AVX-512 BF16, fp32 elsewhere. A reduced
precision is used only after its scores on a sample of the pairs rank like fp32's
(Spearman >= 0.999); otherwise the teacher falls back to fp32 and says so in a warning.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from distill.errors import ConfigError
from distill.ranking import SETTLE_PAIRS
from teachers.device import cpu_supports_bf16

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

DTYPES = ("auto", "fp32", "bf16", "fp16")
MIN_SPEARMAN = 0.999
CHECK_PAIRS = SETTLE_PAIRS


def check_dtype_name(dtype: str) -> str:
    """``dtype`` itself when it is one of :data:`DTYPES`; :class:`ConfigError` otherwise."""
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}", field="dtype")
    return dtype


def target_dtype(dtype: str, device: torch.device) -> str:
    """The precision ``dtype`` asks for on ``device`` ("fp32", "bf16" or "fp16"), before any check."""
    import torch

    if check_dtype_name(dtype) != "auto":
        return dtype
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_supports_bf16():
        return "bf16"
    return "fp32"


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


@dataclass(frozen=True)
class PrecisionCheck:
    """The outcome of comparing reduced-precision scores with fp32 scores of the same pairs."""

    dtype: str
    spearman: float
    passed: bool


def judge_precision(
    reference: np.ndarray, candidate: np.ndarray, dtype: str, min_spearman: float = MIN_SPEARMAN
) -> PrecisionCheck:
    """Accept ``candidate`` scores (in ``dtype``) when they rank like the fp32 ``reference``.

    A NaN or infinite score, or constant scores (no defined correlation), fail.
    """
    from scipy.stats import spearmanr

    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape:
        raise ValueError(f"score arrays differ in shape: {reference.shape} vs {candidate.shape}")
    rho = float("nan")
    finite = np.isfinite(reference).all() and np.isfinite(candidate).all()
    if reference.size >= 2 and finite and np.ptp(reference) > 0 and np.ptp(candidate) > 0:
        rho = float(spearmanr(reference, candidate).statistic)
    return PrecisionCheck(dtype=dtype, spearman=rho, passed=not math.isnan(rho) and rho >= min_spearman)


def sample_pairs(n: int, size: int = CHECK_PAIRS, seed: int = 0) -> np.ndarray:
    """Sorted indices of up to ``size`` of ``n`` pairs, drawn without replacement."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def check_precision(
    score: Callable[[list[str], list[str]], np.ndarray],
    cast: Callable[[str], None],
    dtype: str,
    queries: Sequence[str],
    docs: Sequence[str],
    model: str,
    size: int = CHECK_PAIRS,
    seed: int = 0,
) -> PrecisionCheck:
    """Score a sample of the pairs in fp32, ``cast`` the model to ``dtype``, score them again, judge.

    The model must be in fp32 when called; it is left in ``dtype`` whatever the outcome
    (the caller restores fp32 on failure). A failure is logged as a warning naming ``model``.
    """
    index = sample_pairs(len(queries), size, seed)
    sample_q = [queries[i] for i in index]
    sample_d = [docs[i] for i in index]
    reference = score(sample_q, sample_d)
    cast(dtype)
    result = judge_precision(reference, score(sample_q, sample_d), dtype)
    if result.passed:
        logger.info("%s: %s scores rank like fp32 (Spearman %.5f on %d pairs)", model, dtype, result.spearman,
                    len(index))
    else:
        logger.warning(
            "%s: %s scores do not rank like fp32 (Spearman %.5f < %s on %d pairs); falling back to fp32",
            model, dtype, result.spearman, MIN_SPEARMAN, len(index),
        )
    return result

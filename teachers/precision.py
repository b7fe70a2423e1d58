"""Which floating-point precision a teacher computes in, chosen by measurement.

``dtype="auto"`` times every precision the device runs natively (fp32; bf16 on CPUs with
AMX/AVX-512 BF16; bf16 or fp16 on CUDA) on a small sample of the pairs, after one warm-up
batch each, and keeps the fastest whose scores rank like fp32's (Spearman >= 0.999 on the
sample). A reduced precision measured slower than fp32 is never kept: torch emulates bf16 on
CPUs without native support, and even with it small models can run slower. An explicit
reduced dtype skips the timing but still has to pass the fidelity check, else fp32 is used.

The sample's scores in the chosen precision are returned, so callers keep them as real
scores instead of scoring those pairs again.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from time import perf_counter, process_time
from typing import TYPE_CHECKING, Any

import numpy as np

from distill.errors import ConfigError
from distill.ranking import SETTLE_PAIRS
from teachers.device import cpu_supports_bf16

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

DTYPES = ("auto", "fp32", "bf16", "fp16")
MIN_SPEARMAN = 0.999
SAMPLE_PAIRS = SETTLE_PAIRS
WARMUP_PAIRS = 8  # the untimed warm-up batch before each timing (first calls pay one-off set-up)
# A reduced precision must be this much faster than fp32 on the sample to be kept: a tie within
# timing noise is not worth the lost digits.
MIN_SPEEDUP = 1.05


def check_dtype_name(dtype: str) -> str:
    """``dtype`` itself when it is one of :data:`DTYPES`; :class:`ConfigError` otherwise."""
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}", field="dtype")
    return dtype


def native_dtypes(device: torch.device) -> tuple[str, ...]:
    """The reduced precisions ``device`` computes natively: bf16 on CUDA (fp16 on GPUs
    without bf16) and on CPUs with AMX/AVX-512 BF16; none elsewhere."""
    import torch

    if device.type == "cuda":
        return ("bf16",) if torch.cuda.is_bf16_supported() else ("fp16",)
    if device.type == "cpu" and cpu_supports_bf16():
        return ("bf16",)
    return ()


def candidate_dtypes(dtype: str, device: torch.device) -> tuple[str, ...]:
    """The precisions ``dtype`` may end up as on ``device``, fp32 first (the reference).

    "auto": fp32 plus :func:`native_dtypes`; an explicit reduced dtype: fp32 (its fallback)
    and itself; "fp32": fp32 alone.
    """
    if check_dtype_name(dtype) != "auto":
        return ("fp32",) if dtype == "fp32" else ("fp32", dtype)
    return ("fp32", *native_dtypes(device))


def device_timer(device: torch.device) -> Callable[[], float]:
    """The clock precisions are timed by: this process's CPU time on a CPU, which other jobs
    sharing the cores disturb far less than wall time (on a dedicated CPU the two rank alike);
    wall time elsewhere (an accelerator's work is not CPU time; scores come back to the host,
    so each timing waits for the device)."""
    return (lambda: process_time()) if device.type == "cpu" else (lambda: perf_counter())


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


def sample_pairs(n: int, size: int = SAMPLE_PAIRS, seed: int = 0) -> np.ndarray:
    """Sorted indices of up to ``size`` of ``n`` pairs, drawn without replacement."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


@dataclass(frozen=True)
class Measurement:
    """One precision on the sample: seconds to score it (None when not timed) and its fidelity."""

    dtype: str
    seconds: float | None
    spearman: float | None  # vs fp32 (None for fp32 itself)
    passed: bool


@dataclass
class PrecisionChoice:
    """What :func:`choose_precision` measured and kept.

    ``index`` are the sampled pairs (indices into the pairs it was given) and ``scores``
    their scores in the chosen ``dtype``: real scores, to be kept.
    """

    dtype: str
    measurements: list[Measurement]
    index: np.ndarray = field(repr=False)
    scores: np.ndarray = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The decision and its measurements (JSON), for manifests and logs."""
        rows = []
        for m in self.measurements:
            row = asdict(m)
            if m.seconds:
                row["pairs_per_s"] = round(len(self.index) / m.seconds, 3)
            rows.append(row)
        return {"dtype": self.dtype, "sample_pairs": int(len(self.index)), "measured": rows}


def choose_precision(
    score: Callable[[list[str], list[str]], np.ndarray],
    cast: Callable[[str], None],
    restore: Callable[[], None],
    candidates: Sequence[str],
    queries: Sequence[str],
    docs: Sequence[str],
    model: str,
    *,
    timed: bool = True,
    size: int = SAMPLE_PAIRS,
    seed: int = 0,
    timer: Callable[[], float] | None = None,
) -> PrecisionChoice:
    """Score a sample of the pairs in each of ``candidates`` (fp32 first) and keep the best.

    ``score`` scores pairs with the model as it is; ``cast(dtype)`` converts the fp32 model
    to ``dtype``; ``restore()`` reloads it in fp32 (casting down loses the fp32 weights).
    The model must be in fp32 when called and is left in the chosen precision. With
    ``timed``, each precision is timed by ``timer`` (``time.perf_counter``) after an untimed
    warm-up batch and the fastest one that passes the fidelity check is kept, provided it is
    :data:`MIN_SPEEDUP` times faster than fp32; without, the first reduced one that passes.
    """
    if not candidates or candidates[0] != "fp32":
        raise ValueError(f"candidates must start with fp32, got {candidates}")
    timer = timer or perf_counter
    index = sample_pairs(len(queries), size, seed)
    sample_q, sample_d = [queries[i] for i in index], [docs[i] for i in index]
    measurements: list[Measurement] = []
    scores: dict[str, np.ndarray] = {}
    current = "fp32"
    for dtype in candidates:
        if dtype != current:
            if current != "fp32":
                restore()
            cast(dtype)
            current = dtype
        seconds = None
        if timed:
            score(sample_q[:WARMUP_PAIRS], sample_d[:WARMUP_PAIRS])
            start = timer()
        scores[dtype] = score(sample_q, sample_d)
        if timed:
            seconds = timer() - start
        if dtype == "fp32":
            measurements.append(Measurement(dtype, seconds, None, True))
        else:
            check = judge_precision(scores["fp32"], scores[dtype], dtype)
            measurements.append(Measurement(dtype, seconds, check.spearman, check.passed))
    chosen = _pick(measurements, timed)
    if chosen != current:
        if current != "fp32":
            restore()
        if chosen != "fp32":
            cast(chosen)
    choice = PrecisionChoice(chosen, measurements, index, scores[chosen])
    _log(choice, model)
    return choice


def _pick(measurements: list[Measurement], timed: bool) -> str:
    reference, *reduced = measurements
    passed = [m for m in reduced if m.passed]
    if not timed:
        return passed[0].dtype if passed else "fp32"
    faster = [m for m in passed if m.seconds * MIN_SPEEDUP <= reference.seconds]
    return min(faster, key=lambda m: m.seconds).dtype if faster else "fp32"


def _log(choice: PrecisionChoice, model: str) -> None:
    parts = []
    for m in choice.measurements:
        speed = f"{len(choice.index) / m.seconds:.1f} pairs/s" if m.seconds else "untimed"
        fidelity = "" if m.spearman is None else f", Spearman vs fp32 {m.spearman:.5f}"
        parts.append(f"{m.dtype} {speed}{fidelity}")
    logger.info("%s: precision %s (on %d sampled pairs: %s)", model, choice.dtype, len(choice.index),
                "; ".join(parts))
    failed = [m for m in choice.measurements if not m.passed]
    for m in failed:
        logger.warning("%s: %s scores do not rank like fp32 (Spearman %.5f < %s on %d pairs); not using %s",
                       model, m.dtype, m.spearman, MIN_SPEARMAN, len(choice.index), m.dtype)

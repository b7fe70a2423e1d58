"""Which floating-point precision a teacher computes in, chosen by measurement.

``dtype="auto"`` times every precision the device runs natively (fp32; bf16 on CPUs with
AMX/AVX-512 BF16; bf16 or fp16 on CUDA), and on a CPU dynamic int8 for the teachers that allow it
(:mod:`distill.inference.quantize`: the one reduced precision an AVX2-only CPU runs faster), on a
small sample of the pairs, after one warm-up batch each, and keeps the fastest whose scores rank
like fp32's (see :func:`judge_precision`). A reduced precision measured slower than fp32 is never
kept: torch emulates bf16 on CPUs without native support, and even with it small models can run
slower. An explicit
reduced dtype skips the timing but still has to pass the fidelity check, else fp32 is used.

The sample's scores in the chosen precision are returned, so callers keep them as real
scores instead of scoring those pairs again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from time import perf_counter, process_time
from typing import TYPE_CHECKING, Any

import numpy as np

from distill.core.errors import ConfigError
from distill.core.hardware import native_precisions
from distill.inference.graph import BACKENDS
from distill.rankers.base import SETTLE_PAIRS

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

DTYPES = ("auto", "fp32", "bf16", "fp16", "int8")
BACKEND_CHOICES = ("auto", "torch", *BACKENDS)
# what each graph runtime computes in on a CPU (ONNX Runtime's CPU kernels have no bf16 path)
GRAPH_DTYPES = {"onnx": ("fp32",), "openvino": ("fp32", "bf16")}
# Two sampled pairs whose fp32 scores differ by less than this share of the sample's score
# standard deviation are a near-tie that a reduced precision may swap freely.
TIE_SHARE = 0.02
# Of the other (clearly ordered) couples of sampled pairs, at most this share may come out
# reversed: rounding moves a score a little, a broken compute (overflow, NaN, wrong kernels)
# scrambles the order.
MAX_DISCORDANT_SHARE = 0.01
# Graph runtimes are tried only when torch would take this long on the whole run: their export
# (about 10 s for MiniLM-L6 on 2 cores) then costs a few per cent of it at most.
GRAPH_MIN_RUN_SECONDS = 300.0
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


def check_backend_name(backend: str) -> str:
    """``backend`` itself when it is one of :data:`BACKEND_CHOICES`; :class:`ConfigError` otherwise."""
    if backend not in BACKEND_CHOICES:
        raise ConfigError(f"unknown backend {backend!r}; choose from {', '.join(BACKEND_CHOICES)}", field="backend")
    return backend


def compute_name(backend: str, dtype: str) -> str:
    """``dtype`` for torch (the names caches have always recorded), else ``backend:dtype``."""
    return dtype if backend == "torch" else f"{backend}:{dtype}"


def parse_compute(name: str) -> tuple[str, str]:
    """``(backend, dtype)`` of a compute name (inverse of :func:`compute_name`)."""
    backend, _, dtype = name.rpartition(":")
    return backend or "torch", dtype


def int8_available(device_type: str) -> bool:
    """Whether torch computes dynamic int8 on ``device_type``: on a CPU with a quantized engine."""
    from distill.inference.quantize import int8_engine

    return device_type == "cpu" and int8_engine() is not None


def candidate_computes(dtype: str, device: torch.device, backend: str = "auto",
                       graph_backends: Sequence[str] = (), quantizable: bool = False) -> tuple[str, ...]:
    """The computes ``dtype`` and ``backend`` may end up as on ``device``, torch fp32 first
    (the reference and fallback). ``graph_backends``: the graph runtimes this teacher and
    device can use (:func:`distill.inference.graph.available_backends` on a CPU);
    ``quantizable``: whether the teacher may compute in dynamic int8.

    Both "auto": fp32, :func:`~distill.core.hardware.native_precisions`, int8 (a quantizable
    teacher on a CPU), then each graph runtime in each precision it and the device have; an
    explicit dtype (backend "auto" or "torch"): fp32 and torch in it; an explicit graph
    backend: fp32 and that runtime in ``dtype`` (fp32 for "auto").
    """
    int8 = quantizable and int8_available(device.type)
    if check_dtype_name(dtype) == "int8" and not int8:
        raise ConfigError("int8 is computed on a CPU, for cross-encoder teachers, by a torch with a quantized "
                          "engine", field="dtype")
    if check_backend_name(backend) in BACKENDS:
        if backend not in graph_backends:
            raise ConfigError(f"backend {backend!r} is not available here (a cross-encoder teacher on a CPU, with "
                              "pip install 'distill[onnx]')", field="backend")
        wanted = "fp32" if dtype == "auto" else dtype
        if wanted not in GRAPH_DTYPES[backend]:
            raise ConfigError(f"backend {backend!r} computes in {', '.join(GRAPH_DTYPES[backend])}, not {wanted}",
                              field="dtype")
        return ("fp32", compute_name(backend, wanted))
    if dtype != "auto":
        return ("fp32",) if dtype == "fp32" else ("fp32", dtype)
    native = native_precisions(device.type)
    graphs = () if backend == "torch" else tuple(
        compute_name(b, d) for b in graph_backends for d in GRAPH_DTYPES[b] if d == "fp32" or d in native)
    return ("fp32", *native, *(("int8",) if int8 else ()), *graphs)


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
    """The outcome of comparing reduced-precision scores with fp32 scores of the same pairs.

    ``discordant``: couples of sampled pairs that fp32 orders clearly (beyond a near-tie)
    and the candidate orders the other way.
    """

    dtype: str
    spearman: float
    passed: bool
    discordant: int = 0


def judge_precision(
    reference: np.ndarray, candidate: np.ndarray, dtype: str, tie_share: float = TIE_SHARE,
    max_discordant_share: float = MAX_DISCORDANT_SHARE,
) -> PrecisionCheck:
    """Accept ``candidate`` scores (in ``dtype``) when they rank like the fp32 ``reference``:
    of the couples of pairs that fp32 scores more than ``tie_share`` of its standard
    deviation apart, at most ``max_discordant_share`` come out the other way round.

    A rank correlation threshold fails a precision for swapping near-ties (bf16 swapped three
    near-tied couples of 32 pooled pairs of a trained teacher, Spearman 0.9989, every score
    within 0.013 of fp32's); a tolerance relative to the scores' spread discounts those and
    still fails a compute that reorders the sample. A NaN or infinite score, or constant
    scores, fail. Spearman's rho is reported alongside.
    """
    from scipy.stats import spearmanr

    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape:
        raise ValueError(f"score arrays differ in shape: {reference.shape} vs {candidate.shape}")
    finite = np.isfinite(reference).all() and np.isfinite(candidate).all()
    if reference.size < 2 or not finite or np.ptp(reference) == 0 or np.ptp(candidate) == 0:
        return PrecisionCheck(dtype=dtype, spearman=float("nan"), passed=False)
    rho = float(spearmanr(reference, candidate).statistic)
    gap = reference[:, None] - reference[None, :]
    clear = np.triu(np.abs(gap) > tie_share * reference.std(), k=1)
    swapped = np.sign(gap) != np.sign(candidate[:, None] - candidate[None, :])
    discordant = int((clear & swapped).sum())
    passed = discordant <= max_discordant_share * max(1, int(clear.sum()))
    return PrecisionCheck(dtype=dtype, spearman=rho, passed=passed, discordant=discordant)


def sample_pairs(n: int, size: int = SAMPLE_PAIRS, seed: int = 0) -> np.ndarray:
    """Sorted indices of up to ``size`` of ``n`` pairs, drawn without replacement."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


@dataclass(frozen=True)
class Measurement:
    """One compute on the sample: seconds to score it (None when not timed), its fidelity, and
    the seconds it took to get ready (casting the weights, or exporting a graph and opening it)."""

    dtype: str  # the compute's name (see compute_name)
    seconds: float | None
    spearman: float | None  # vs fp32 (None for fp32 itself)
    passed: bool
    discordant: int | None = None  # see PrecisionCheck
    setup_seconds: float | None = None


@dataclass
class PrecisionChoice:
    """What :func:`choose_precision` measured and kept.

    ``index`` are the sampled pairs (indices into the pairs it was given) and ``scores``
    their scores in the chosen compute ``dtype``: real scores, to be kept. ``skipped``: the
    candidates not tried, because the run was too short for them to pay off.
    """

    dtype: str
    measurements: list[Measurement]
    index: np.ndarray = field(repr=False)
    scores: np.ndarray = field(repr=False)
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The decision and its measurements (JSON), for manifests and logs."""
        rows = []
        for m in self.measurements:
            row = {k: v for k, v in asdict(m).items() if v is not None or k in ("seconds", "spearman")}
            if m.seconds:
                row["pairs_per_s"] = round(len(self.index) / m.seconds, 3)
            rows.append(row)
        record = {"dtype": self.dtype, "sample_pairs": int(len(self.index)), "measured": rows}
        if self.skipped:
            record["skipped"] = {"computes": self.skipped,
                                 "why": f"the run would take torch under {GRAPH_MIN_RUN_SECONDS:.0f} s"}
        return record


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
    min_graph_run_seconds: float = GRAPH_MIN_RUN_SECONDS,
    total_pairs: int | None = None,
) -> PrecisionChoice:
    """Score a sample of the pairs in each of ``candidates`` (torch fp32 first) and keep the best.

    ``score`` scores pairs with the model as it is; ``cast(name)`` converts the fp32 model
    to a compute (another dtype, or a graph runtime); ``restore()`` returns it to torch fp32
    (reloading: casting down loses the fp32 weights). The model must be in fp32 when called
    and is left in the chosen compute. With ``timed``, each compute is timed by ``timer``
    (``time.perf_counter``) after an untimed warm-up batch and the fastest one that passes
    the fidelity check is kept, provided it is :data:`MIN_SPEEDUP` times faster than fp32;
    without, the first other one that passes. Timed, the graph runtimes among the candidates
    are skipped when the fastest torch compute would score the run's ``total_pairs`` (default:
    the pairs given, when they are the whole run) within ``min_graph_run_seconds``.
    """
    if not candidates or candidates[0] != "fp32":
        raise ValueError(f"candidates must start with fp32, got {candidates}")
    timer = timer or perf_counter
    index = sample_pairs(len(queries), size, seed)
    sample_q, sample_d = [queries[i] for i in index], [docs[i] for i in index]
    measurements: list[Measurement] = []
    scores: dict[str, np.ndarray] = {}
    skipped: list[str] = []
    current = "fp32"
    for name in candidates:
        if timed and parse_compute(name)[0] != "torch" and _too_short(
                measurements, len(index), total_pairs or len(queries), min_graph_run_seconds):
            skipped.append(name)
            continue
        setup = _cast_to(name, current, cast, restore)
        current = name
        scores[name], seconds = _sample_scores(score, sample_q, sample_d, timer if timed else None)
        if name == "fp32":
            measurements.append(Measurement(name, seconds, None, True))
        else:
            check = judge_precision(scores["fp32"], scores[name], name)
            measurements.append(Measurement(name, seconds, check.spearman, check.passed, check.discordant,
                                            round(setup, 3)))
    chosen = _pick(measurements, timed)
    if chosen != current:
        if current != "fp32":
            restore()
        if chosen != "fp32":
            cast(chosen)
    choice = PrecisionChoice(chosen, measurements, index, scores[chosen], skipped)
    _log(choice, model, timed)
    return choice


def _cast_to(name: str, current: str, cast: Callable[[str], None], restore: Callable[[], None]) -> float:
    """Turn the model from compute ``current`` into ``name`` (back through fp32); the seconds that took."""
    start = perf_counter()
    if name != current:
        if current != "fp32":
            restore()
        cast(name)
    return perf_counter() - start


def _sample_scores(score: Callable[[list[str], list[str]], np.ndarray], queries: list[str], docs: list[str],
                   timer: Callable[[], float] | None) -> tuple[np.ndarray, float | None]:
    """``score`` of the sample pairs, and with a ``timer`` the seconds it took after an untimed warm-up batch
    (without, None)."""
    if timer is None:
        return score(queries, docs), None
    score(queries[:WARMUP_PAIRS], docs[:WARMUP_PAIRS])
    start = timer()
    scores = score(queries, docs)
    return scores, timer() - start


def _too_short(measured: list[Measurement], sample: int, total: int, min_seconds: float) -> bool:
    """Whether the fastest torch compute measured so far scores ``total`` pairs within ``min_seconds``."""
    rates = [m.seconds / sample for m in measured if m.passed and m.seconds]
    return bool(rates) and total * min(rates) < min_seconds


def _pick(measurements: list[Measurement], timed: bool) -> str:
    reference, *reduced = measurements
    passed = [m for m in reduced if m.passed]
    if not timed:
        return passed[0].dtype if passed else "fp32"
    faster = [m for m in passed if m.seconds * MIN_SPEEDUP <= reference.seconds]
    return min(faster, key=lambda m: m.seconds).dtype if faster else "fp32"


def _log(choice: PrecisionChoice, model: str, timed: bool) -> None:
    """Log what was measured and kept; a compute that failed the fidelity check is a warning when the user asked
    for it, else (one of auto's candidates, e.g. int8 on a teacher it does not suit) part of the decision."""
    parts = []
    for m in choice.measurements:
        speed = f"{len(choice.index) / m.seconds:.1f} pairs/s" if m.seconds else "untimed"
        fidelity = "" if m.spearman is None else f", Spearman vs fp32 {m.spearman:.5f}"
        setup = f", ready in {m.setup_seconds:.1f} s" if m.setup_seconds and m.setup_seconds >= 0.5 else ""
        parts.append(f"{m.dtype} {speed}{fidelity}{setup}")
    logger.info("%s: compute %s (on %d sampled pairs: %s)", model, choice.dtype, len(choice.index),
                "; ".join(parts))
    if choice.skipped:
        logger.info("%s: not tried %s: the run is too short for an export to pay off", model,
                    ", ".join(choice.skipped))
    for m in (m for m in choice.measurements if not m.passed):
        logger.log(logging.INFO if timed else logging.WARNING,
                   "%s: %s scores do not rank like fp32 (%s clearly ordered couples of the %d sampled pairs reversed, "
                   "Spearman %.5f); not using %s", model, m.dtype, m.discordant, len(choice.index), m.spearman, m.dtype)

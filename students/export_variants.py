"""Which exports ``distill export`` builds, how fast each ranks, and which ``--quantize auto`` keeps.

An export is worth having where it runs faster than the torch model it came from, and that depends
on the CPU (int8 kernels need VNNI to pay off; OpenVINO and ONNX Runtime lead on different CPUs). So
every export is timed on the machine at hand, the way ``distill evaluate --latency`` times a ranker
(:func:`distill.evaluation.latency.measure_latency`: one query's top 100 candidates per call, 1
thread, the p50 over a seeded sample of queries), against the torch model as ``distill evaluate`` runs it by
default (a cross-encoder in the precision ``dtype="auto"`` settles on: bf16 where the CPU computes it
natively, so on such a CPU an export must beat torch bf16, not fp32), timed the same way in the same
process. ``--quantize auto`` builds every variant of :data:`VARIANTS` (of ``--format``'s
runtime only, when it is given), checks and times each, and keeps the fastest that passes the
fidelity check; one slower than torch is kept only when no passing variant is faster, and then
:func:`choose_variant` says so.
"""

from __future__ import annotations

import logging
from typing import Any

from distill.core.errors import DistillError
from distill.data.beir import Dataset

log = logging.getLogger(__name__)

# name -> (format, quantize): the exports ``--quantize auto`` chooses among
VARIANTS: dict[str, tuple[str, str | None]] = {
    "openvino": ("openvino", None),
    "openvino_int8": ("openvino", "int8"),  # static, NNCF-calibrated
    "onnx": ("onnx", None),
    "onnx_int8": ("onnx", "int8"),  # ONNX Runtime's dynamic quantization
}
DEFAULT_FORMAT = "onnx"  # an export without --format nor --quantize auto
FIDELITY_FIELDS = ("ndcg@10_ratio", "overlap@10", "kendall_tau")


class ExportRefused(DistillError):
    """The export ranks too unlike the fp32 model; nothing was written."""


def variant_name(format: str, quantize: str | None) -> str:
    """The name of a variant in :data:`VARIANTS` (``onnx``, ``openvino_int8``, ...)."""
    return f"{format}_{quantize}" if quantize else format


def candidate_variants(format: str | None, quantize: str | None) -> list[str]:
    """The variants an export with ``--format format --quantize quantize`` builds: with ``auto``, every
    variant of ``format``'s runtime (both runtimes without ``--format``); otherwise the one asked for."""
    if quantize == "auto":
        return [name for name, (fmt, _) in VARIANTS.items() if format in (None, fmt)]
    return [variant_name(format or DEFAULT_FORMAT, quantize)]


def measure_speed(ranker: Any, dataset: Dataset, run: Any, *, candidates: int, queries: int,
                  threads: int, seed: int = 0) -> float:
    """p50 milliseconds ``ranker`` takes to rerank one query's top ``candidates`` of ``run`` on ``threads``
    threads, over ``queries`` of its queries, measured as ``distill evaluate --latency`` measures it.

    A bi-encoder is timed encoding the candidates (``evaluate``'s "no precompute" row): with its corpus
    embeddings precomputed, only the query's encoding would be timed, not what the export changes.
    """
    from distill.evaluation.latency import measure_latency

    result = measure_latency(ranker, dataset, run, k=candidates, n_queries=queries, prepare=False,
                             threads=threads, seed=seed)
    return result.p50_ms


def candidate_row(name: str, fidelity: dict[str, Any], ms: float, torch_ms: float) -> dict[str, Any]:
    """What ``distill.json`` records of one built variant: its speed against torch's and its check."""
    fmt, quantize = VARIANTS.get(name, (name, None))
    row = {"variant": name, "format": fmt, "quantize": quantize, "passed": fidelity["passed"],
           "ms_per_query": ms, "speedup": torch_ms / ms if ms > 0 else float("inf"),
           "summary": fidelity["summary"]}
    row.update({key: fidelity[key] for key in FIDELITY_FIELDS if key in fidelity})
    if not fidelity["passed"]:
        row["reason"] = fidelity["reason"]
    return row


def baseline_name(compute: str) -> str:
    """How messages name the model every export is timed against: ``torch bf16``, ``torch fp32``, or a graph
    runtime's compute (``openvino:fp32``) where ``auto`` settled on one."""
    return compute if ":" in compute else f"torch {compute}"


def choose_variant(rows: list[dict[str, Any]], torch_ms: float, auto: bool,
                   baseline: str) -> tuple[str | None, str]:
    """The variant to keep among ``rows`` (:func:`candidate_row`) and why; None when none passes.

    Asked for one variant, that one (when it passes). With ``auto``: the fastest passing variant that is
    faster than the model as evaluate runs it (``baseline``, :func:`baseline_name`, at ``torch_ms``); where
    none is, the fastest passing one, saying so.
    """
    passing = sorted((row for row in rows if row["passed"]), key=lambda row: row["ms_per_query"])
    if not passing:
        return None, "; ".join(f"{row['variant']}: {row['reason']}" for row in rows)
    best = passing[0]
    pace = f"{best['ms_per_query']:.1f} ms/query against {baseline}'s {torch_ms:.1f}"
    if not auto:
        return best["variant"], f"asked for ({pace})"
    if best["ms_per_query"] < torch_ms:
        return best["variant"], (f"the fastest of the {len(passing)} of {len(rows)} variants that pass the "
                                 f"fidelity check, {best['speedup']:.2f}x {baseline} ({pace})")
    why = (f"no variant that passes the fidelity check is faster than {baseline} on this machine; kept the "
           f"fastest that passes ({pace})")
    log.warning("%s: %s", best["variant"], why)
    return best["variant"], why

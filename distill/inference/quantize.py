"""Dynamic int8 on a CPU: a model's linear layers with int8 weights, activations quantized per batch.

On an AVX2-only CPU there is no native bf16, so the one reduced precision torch can compute faster
than fp32 there is int8 (FBGEMM's AVX2 kernels multiply 8-bit values with ``vpmaddubsw``); on
AVX-512 VNNI it is faster still. MiniLM-L6 on SciFact pairs (mean 348 tokens, 2 cores; dynamic int8
against fp32): 1.9x with AVX-512 VNNI, 1.2x capped to AVX2 (docs/results/teacher_speed.md). What it
costs in ranking quality differs per model, so a teacher uses it only after the same fidelity check
as bf16 (:mod:`teachers.precision`).

torch's eager ``quantize_dynamic`` is used (deprecated in favour of torchao, which needs
``torch.compile`` for fast int8 on a CPU): it runs FBGEMM's kernels eagerly, with activations at
7 bits (``reduce_range``) so the AVX2 kernel's 16-bit intermediate sums cannot saturate.
"""

from __future__ import annotations

import warnings
from typing import Any

# FBGEMM's kernels first: on the Xeon of docs/results/teacher_speed.md its dynamic linear ran 1.33x
# the "x86" engine's (which routes some shapes to oneDNN) and 1.19x oneDNN's, and the same with AVX2.
_ENGINES = ("fbgemm", "x86")


def int8_engine() -> str | None:
    """The quantized engine dynamic int8 runs on in this torch build (None: none, e.g. on ARM without one)."""
    import torch

    supported = torch.backends.quantized.supported_engines
    return next((engine for engine in _ENGINES if engine in supported), None)


def dynamic_int8(model: Any) -> Any:
    """A copy of ``model`` (fp32, on a CPU) with every ``nn.Linear`` in dynamic int8; ``model`` is unchanged."""
    import torch
    from torch.ao.quantization import quantize_dynamic

    engine = int8_engine()
    if engine is None:
        raise RuntimeError("this torch build has no quantized CPU engine for dynamic int8")
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine  # the weights are packed for the engine in use
    try:
        with warnings.catch_warnings():  # the deprecation notice (see the module docstring)
            warnings.simplefilter("ignore")
            return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    finally:
        torch.backends.quantized.engine = previous

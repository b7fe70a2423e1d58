"""What this machine's CPU computes natively: read once from ``/proc/cpuinfo``, never assumed."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

_BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
# oneDNN's instruction-set levels without bf16 arithmetic: a process run with ONEDNN_MAX_CPU_ISA (or its
# older name DNNL_MAX_CPU_ISA) at one of these computes bf16 as a CPU without it does, emulated. Any other
# value (a bf16 level, ALL, a name this list does not know) leaves the CPU's flags in charge.
_ISA_CAPS_WITHOUT_BF16 = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI"})


def cpu_supports_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the x86 CPU has native bf16 arithmetic (AMX or AVX-512 BF16).

    Without it torch emulates bf16 on CPU, which is slower than fp32, so we never pick it
    there. Non-x86 machines and systems without ``/proc/cpuinfo`` answer False.
    """
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(_BF16_CPU_FLAGS & set(line.partition(":")[2].split()))
    return False


def isa_capped_below_bf16(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process caps oneDNN (torch's CPU matmuls) below bf16 arithmetic, as a check of how distill
    runs on an AVX2 machine does (docs/cpus.md): the CPU's flags still list bf16, its kernels no longer use it."""
    environ = os.environ if environ is None else environ
    cap = environ.get("ONEDNN_MAX_CPU_ISA") or environ.get("DNNL_MAX_CPU_ISA") or ""
    return cap.strip().upper() in _ISA_CAPS_WITHOUT_BF16


def native_precisions(device_type: str) -> tuple[str, ...]:
    """The reduced precisions a ``device_type`` ("cpu", "cuda") computes natively: bf16 on CUDA
    (fp16 on GPUs without bf16) and on CPUs with AMX/AVX-512 BF16 (unless capped below it, see
    :func:`isa_capped_below_bf16`); none elsewhere. Scoring and training both time these against
    fp32 before trusting them."""
    if device_type == "cuda":
        import torch

        return ("bf16",) if torch.cuda.is_bf16_supported() else ("fp16",)
    if device_type == "cpu" and cpu_supports_bf16() and not isa_capped_below_bf16():
        return ("bf16",)
    return ()

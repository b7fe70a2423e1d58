"""What this machine's CPU computes natively: read once from ``/proc/cpuinfo``, never assumed."""

from __future__ import annotations

from pathlib import Path

_BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


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


def native_precisions(device_type: str) -> tuple[str, ...]:
    """The reduced precisions a ``device_type`` ("cpu", "cuda") computes natively: bf16 on CUDA
    (fp16 on GPUs without bf16) and on CPUs with AMX/AVX-512 BF16; none elsewhere. Scoring and
    training both time these against fp32 before trusting them."""
    if device_type == "cuda":
        import torch

        return ("bf16",) if torch.cuda.is_bf16_supported() else ("fp16",)
    if device_type == "cpu" and cpu_supports_bf16():
        return ("bf16",)
    return ()

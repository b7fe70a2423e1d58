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

"""Where teachers run: the best available accelerator (and, from :mod:`distill.core.hardware`, whether
this CPU computes in bf16)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from distill.core.hardware import cpu_supports_bf16

if TYPE_CHECKING:
    import torch

def resolve_device(device: str | None = None) -> torch.device:
    """``device`` as a :class:`torch.device`; when None, CUDA if available, else MPS, else CPU."""
    import torch

    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


__all__ = ["cpu_supports_bf16", "resolve_device"]

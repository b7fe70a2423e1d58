"""Data-parallel training under ``torchrun``: which process is which, and rank 0 owning every output.

``torchrun --standalone --nproc_per_node N -m distill.cli train-student --student cross-encoder ...``
starts N processes with ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` in their environment. The
trainer (Hugging Face's, under sentence-transformers') then trains with DistributedDataParallel:
each rank takes every N-th batch of ``--batch-size`` groups from the same seeded order, and the
gradients are averaged over the ranks, so a step sees a global batch of ``batch size x N`` groups
(docs/distributed.md). The process group is gloo on CPUs, NCCL on GPUs.

Everything else runs once, on rank 0: the automatic precision measurement (its choice is
broadcast, so no two ranks train in different precisions), validation, the rounds' record and
selection, ``--out`` and its ``distill.json``, and console messages (the other ranks log errors
only). The other ranks wait at a barrier, or for rank 0's broadcast value, and return the same
result. A rank that fails ends the run: torchrun stops the others, and a rerun with ``--resume``
continues from the last checkpoint rank 0 wrote. All ranks only read the teacher cache.

Ray Train (``train-student --engine ray``, :mod:`students.ray_train`) runs the same training in each
of its workers after initialising the process group itself: a group already initialised in this
process gives the rank and world size (rather than torchrun's variables), is joined as it is, never
initialised twice, and never destroyed here (whoever created it ends it: Ray Train, or the process
exit under torchrun).

Without torchrun or Ray Train (``WORLD_SIZE`` unset or 1, no process group) every function here is a
no-op or runs its argument, so single-process training is unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def _group() -> Any:
    """``torch.distributed`` when this process has joined a process group (Ray Train's, torchrun's once
    :func:`init` ran, or a caller's), else None; torch is not imported for the question (no group without it)."""
    dist = sys.modules.get("torch.distributed")
    return dist if dist is not None and dist.is_available() and dist.is_initialized() else None


def world_size() -> int:
    """How many processes train together: the process group's size, else torchrun's ``WORLD_SIZE`` (1 alone)."""
    group = _group()
    return group.get_world_size() if group is not None else int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's global rank: in the process group, else torchrun's ``RANK`` (0 alone)."""
    group = _group()
    return group.get_rank() if group is not None else int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Whether this process owns the outputs and the console (rank 0)."""
    return rank() == 0


def init() -> bool:
    """Join the process group of several processes, once; whether there is one.

    Under torchrun the group is initialised here (gloo on CPUs, NCCL on GPUs, each process on GPU
    ``LOCAL_RANK``): the trainer would join it too when it builds its arguments, but the precision is
    chosen (and broadcast) before that. A group already initialised (Ray Train's, which also chose the
    backend and device) is used as it is. Ranks other than 0 keep only their errors on the console from
    here on (:func:`quiet_other_ranks`).
    """
    if world_size() <= 1:
        return False
    if _group() is None:
        import torch
        import torch.distributed as dist

        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    quiet_other_ranks()
    return True


def quiet_other_ranks() -> None:
    """On ranks other than 0, keep only errors of logging and no Python warnings: rank 0 says it all once."""
    if not is_main():
        logging.getLogger().setLevel(logging.ERROR)
        warnings.simplefilter("ignore")


def barrier() -> None:
    """Wait until every rank reaches this point (nothing without torchrun)."""
    if init():
        import torch.distributed as dist

        dist.barrier()


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` (JSON-able) on every rank; ``value`` itself without torchrun.

    The value travels as JSON bytes in a tensor (no pickle, as ``broadcast_object_list`` would use).
    """
    if not init():
        return value
    import torch
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    data = json.dumps(value).encode() if is_main() else b""
    size = torch.tensor([len(data)], dtype=torch.long, device=device)
    dist.broadcast(size, src=0)
    buffer = torch.zeros(int(size.item()), dtype=torch.uint8, device=device)
    if is_main():
        buffer.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buffer, src=0)
    return json.loads(bytes(buffer.cpu().tolist()).decode())


def on_main(work: Callable[[], T]) -> T:
    """``work()`` run on rank 0 only, its (JSON-able) result returned on every rank."""
    return broadcast(work() if is_main() else None)


def main_writes(work: Callable[[], object]) -> None:
    """``work()`` (writing outputs) run on rank 0 only; every rank returns once it is done."""
    if is_main():
        work()
    barrier()

"""Training checkpoints without pickle: optimizer, scheduler and RNG states as safetensors + JSON.

transformers' Trainer writes a checkpoint's optimizer, scheduler and RNG states with
``torch.save`` (a pickle inside a zip) and the training arguments as a pickled
``training_args.bin``. It reads them back with torch's restricted unpickler, but distill's rule
is stricter: nothing it writes or reads is a pickle. :class:`SafeCheckpoints` is a mixin for a
Trainer class that keeps every other part of the checkpoint (the model as safetensors,
``trainer_state.json``) and stores those states as ``<name>.safetensors`` (the tensors) beside
``<name>.json`` (the structure, with each tensor's key). transformers has no option for this,
hence the mixin.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.core.io import read_json, write_text_atomic

OPTIMIZER, SCHEDULER, RNG = "optimizer", "scheduler", "rng_state"


def _flatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """``obj`` as JSON, its tensors and arrays moved into ``tensors`` under their key."""
    if isinstance(obj, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = str(len(tensors))
        tensors[key] = torch.from_numpy(obj.astype(np.int64) if obj.dtype.kind == "u" else obj.copy())
        return {"__ndarray__": key, "dtype": obj.dtype.str}
    if isinstance(obj, dict):  # keys may be ints (an optimizer's state): kept with their type
        return {"__dict__": [[_flatten(k, tensors), _flatten(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_flatten(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_flatten(v, tensors) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint without pickle")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return tensors[obj["__ndarray__"]].numpy().astype(np.dtype(obj["dtype"]))
    if "__tuple__" in obj:
        return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
    return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in obj["__dict__"]}


def save_state(state: Any, folder: Path, name: str) -> None:
    """Write ``state`` (nested dicts, lists, tuples, numbers, tensors, arrays) as ``name``.safetensors/json."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    structure = _flatten(state, tensors)
    save_file(tensors, str(folder / f"{name}.safetensors"))
    write_text_atomic(folder / f"{name}.json", json.dumps(structure))


def load_state(folder: Path, name: str) -> Any | None:
    """What :func:`save_state` wrote, or None if ``folder`` has no such state."""
    from safetensors.torch import load_file

    structure, arrays = folder / f"{name}.json", folder / f"{name}.safetensors"
    if not (structure.exists() and arrays.exists()):
        return None
    return _unflatten(read_json(structure), load_file(str(arrays)))


def _rng_name() -> str:
    """The RNG state's file name: one per rank under torchrun, else one."""
    from distill.training.distributed import rank, world_size

    return f"{RNG}_{rank()}" if world_size() > 1 else RNG


class SafeCheckpoints:
    """Mixin for a transformers Trainer (first in the bases): checkpoints with no pickle in them.

    A scaler's state (fp16 on GPU) is kept the same way. Under ``torchrun`` rank 0 writes the states
    the ranks share (optimizer, scheduler, scaler: DDP keeps them equal) and every rank its own RNG
    state (``rng_state_<rank>``, as transformers names them), so a rerun resumes each rank's dropout
    stream where it was.
    """

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if self.args.should_save:
            save_state(self.optimizer.state_dict(), Path(output_dir), OPTIMIZER)
            save_state(self.lr_scheduler.state_dict(), Path(output_dir), SCHEDULER)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is None:
            return
        optimizer, scheduler = load_state(Path(checkpoint), OPTIMIZER), load_state(Path(checkpoint), SCHEDULER)
        if optimizer is None or scheduler is None:
            # a checkpoint of an older distill (torch.save files) or a half-copied one: going on with a
            # fresh optimizer would silently train differently from the run it claims to continue
            from distill.core.errors import ConfigError

            raise ConfigError(f"no {OPTIMIZER}/{SCHEDULER} state (.safetensors + .json) to resume from; delete "
                              "the checkpoints folder to start afresh", path=checkpoint)
        self.optimizer.load_state_dict(optimizer)
        self.lr_scheduler.load_state_dict(scheduler)

    def _save_scaler(self, output_dir: str) -> None:
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and self.args.should_save:
            save_state(scaler.state_dict(), Path(output_dir), "scaler")

    def _load_scaler(self, checkpoint: str | None) -> None:
        state = load_state(Path(checkpoint), "scaler") if checkpoint else None
        if state is not None and getattr(self.accelerator, "scaler", None) is not None:
            self.accelerator.scaler.load_state_dict(state)

    def _save_rng_state(self, output_dir: str) -> None:
        states = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
        if torch.cuda.is_available():
            states["cuda"] = torch.cuda.random.get_rng_state()
        save_state(states, Path(output_dir), _rng_name())

    def _load_rng_state(self, checkpoint: str | None) -> None:
        states = load_state(Path(checkpoint), _rng_name()) if checkpoint else None
        if states is None:
            return
        random.setstate(states["python"])
        np.random.set_state(states["numpy"])
        torch.random.set_rng_state(states["cpu"])
        if "cuda" in states and torch.cuda.is_available():
            torch.cuda.random.set_rng_state(states["cuda"])

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """The model as the trainer saves it, less ``training_args.bin`` (a pickle; nothing reads it)."""
        from transformers.trainer import TRAINING_ARGS_NAME

        super()._save(output_dir, state_dict)
        (Path(output_dir or self.args.output_dir) / TRAINING_ARGS_NAME).unlink(missing_ok=True)

"""Exported graphs kept between processes, found by what the model computes.

A teacher that scores through ONNX Runtime or OpenVINO is exported from torch first (seconds for
MiniLM, minutes for a large model), and every process paid that again: ``score-teacher`` per
split, ``cascade build`` and ``evaluate`` timing the live teacher. As the Hugging Face hub cache
keeps downloads (and OpenVINO's ``CACHE_DIR`` compiled blobs), the exported files now live in a
user cache folder under a name derived from the model's content: its class, config and every
weight, the torch and OpenVINO versions that wrote the graph, and :data:`FORMAT` (raised when the
exported graph changes). Nothing there is trusted by path: other weights make another name.

The folder is ``$DISTILL_GRAPH_CACHE``, else ``$XDG_CACHE_HOME/distill/graphs`` (``~/.cache``);
``DISTILL_GRAPH_CACHE=off`` exports into a temporary folder per model instead, as before. Each file
is written beside its final name and renamed (:func:`distill.core.io.atomic_path`), so a killed
export leaves no graph to load; writers racing on one model write the same files. The
:data:`KEEP` most recently used models are kept, older ones removed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shutil
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any

ENV = "DISTILL_GRAPH_CACHE"
OFF = ("off", "0", "false", "no", "none")
FORMAT = 1  # bumped when distill.inference.graph_export writes a different graph for the same model
KEEP = 4  # models whose graphs are kept; each takes about twice its fp32 weights on disk
_STALE_TMP_S = 24 * 3600  # a temporary older than this belongs to a writer that died
_KEY = re.compile(r"[0-9a-f]{32}")  # model_key's names (a 16-byte digest in hex)


def cache_root() -> Path | None:
    """Where exported graphs are kept; None when the cache is turned off."""
    value = os.environ.get(ENV, "").strip()
    if value.lower() in OFF:
        return None
    if value:
        return Path(value).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "distill" / "graphs"


def model_key(model: Any, kind: str) -> str:
    """A hex digest of everything the exported graph of ``model`` (a torch module, as ``kind``
    exports it) depends on: its class, config, parameter and buffer bytes, and the exporters'
    versions."""
    import torch

    digest = hashlib.blake2b(digest_size=16)
    config = getattr(model, "config", None)
    head = [kind, type(model).__qualname__, config.to_json_string() if config is not None else "",
            torch.__version__, _version("openvino"), str(FORMAT)]
    digest.update("\n".join(head).encode())
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def graph_folder(model: Any, kind: str, owner: object) -> Path:
    """The folder to export ``model``'s graph into and load it from: its entry in the cache
    (created, marked as just used, older entries pruned), or a temporary folder removed with
    ``owner`` when the cache is off or cannot be written."""
    root = cache_root()
    if root is not None:
        folder = root / model_key(model, kind)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            os.utime(folder)
            prune(root, keep=KEEP, current=folder)
            return folder
        except OSError:  # a read-only home, a full disk: export as if the cache were off
            pass
    folder = Path(tempfile.mkdtemp(prefix="distill-graph-"))
    weakref.finalize(owner, shutil.rmtree, folder, True)
    return folder


def prune(root: Path, *, keep: int, current: Path | None = None) -> list[Path]:
    """Remove all but the ``keep`` most recently used model folders under ``root`` (never
    ``current``), and temporaries left by writers that died; return the folders removed."""
    # only folders named as model_key names them: whatever else a user keeps in a folder given as the cache stays
    entries = sorted((p for p in root.iterdir() if p.is_dir() and _KEY.fullmatch(p.name)),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    removed = [p for p in entries[keep:] if p != current]
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    now = time.time()
    for tmp in (t for entry in entries for t in entry.glob(".*.tmp")):
        if now - tmp.stat().st_mtime <= _STALE_TMP_S:
            continue
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
    return removed


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return ""

"""Run manifests: every output folder records its config, seed and library versions."""

from __future__ import annotations

import hashlib
import platform
import sys
import time
from dataclasses import asdict, is_dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from distill.core.io import write_json_atomic

_PACKAGES = (
    "distill", "torch", "transformers", "sentence-transformers", "lightgbm",
    "polars", "bm25s", "ir-measures", "numpy",
)


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose behaviour changes results."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def frame_hash(frame: Any) -> str:
    """A sha256 of a polars DataFrame's content (row order included), stable across versions
    and machines (polars' own row hash is not)."""
    h = hashlib.sha256(",".join(frame.columns).encode())
    for column in frame.columns:
        for value in frame[column].cast(str).fill_null("\x00").to_list():
            h.update(value.encode("utf-8"))
            h.update(b"\x1f")
    return h.hexdigest()[:16]


def write_manifest(folder: str | Path, kind: str, config: Any, **extra: Any) -> Path:
    """Write ``distill.json`` into ``folder``: what made it, with which settings and versions."""
    cfg = asdict(config) if is_dataclass(config) else dict(config)
    body = {
        "kind": kind,
        "config": cfg,
        "versions": library_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }
    path = Path(folder) / "distill.json"
    write_json_atomic(path, body)
    return path

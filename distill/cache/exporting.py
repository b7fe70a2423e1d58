"""A teacher cache's scores as a file (``distill cache export``), the inverse of :mod:`distill.cache.importing`.

- ``trec``: ``qid Q0 docid rank score tag``, ranked per query by descending score (ties by docid, as
  every run distill writes), each score written in the shortest form that reads back as the same
  float32 (:func:`~distill.data.runs.write_run` rounds to 6 decimals, which would not import back
  as the same scores), the tag the teacher's name;
- ``parquet``: ``qid, docid, score`` (float32) and ``rank`` in the same order, with the teacher's
  fingerprint in the file's key-value metadata (``distill.teacher``).

``distill cache import`` reads either back into the same scores; a ranks-only cache's file, imported
with ``--ranks-only``, gives the same ranking and so the same derived scores.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from distill.cache.importing import file_format
from distill.cache.store import read_scores
from distill.core.io import atomic_path, write_text_atomic
from distill.core.schema import DOCID, QID, RANK, SCORE, with_ranks

EXPORT_FORMATS = ("trec", "parquet")
TEACHER_KEY = "distill.teacher"  # Parquet metadata: the cache's teacher fingerprint


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_cache` wrote: ``rows`` scores of ``queries`` queries to ``out`` in ``format``."""

    out: Path
    format: str
    rows: int
    queries: int


def run_tag(fingerprint: dict[str, Any]) -> str:
    """A TREC tag for the teacher: its name (an imported teacher's) or kind, whitespace replaced."""
    name = str(fingerprint.get("name") or fingerprint.get("kind") or "teacher")
    return re.sub(r"\s+", "_", name.strip()) or "teacher"


def export_cache(cache: Path, out: Path, format: str | None = None) -> ExportResult:
    """Write the scores of the teacher cache ``cache`` (those scored from its current texts) to the file
    ``out``, as ``format`` (trec | parquet; from ``out``'s extension when None), atomically."""
    kind = file_format(Path(out), format, EXPORT_FORMATS)
    scores, manifest = read_scores(cache)
    ranked = with_ranks(scores)
    if kind == "trec":
        lines = ranked.select(pl.format("{} Q0 {} {} {} {}", QID, DOCID, RANK, pl.col(SCORE).cast(pl.String),
                                        pl.lit(run_tag(manifest["teacher"])))).to_series()
        write_text_atomic(out, "\n".join(lines.to_list()) + "\n")
    else:
        metadata = {TEACHER_KEY: json.dumps(manifest["teacher"], sort_keys=True, default=str)}
        with atomic_path(out) as tmp:
            ranked.select(QID, DOCID, SCORE, RANK).write_parquet(tmp, compression="zstd", metadata=metadata)
    return ExportResult(Path(out), kind, ranked.height, ranked[QID].n_unique())

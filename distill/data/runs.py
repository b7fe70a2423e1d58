"""TREC run files: ``qid Q0 docid rank score tag``, one line per ranked document."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl

from distill.core.errors import InputError
from distill.core.io import atomic_path
from distill.core.schema import DOCID, QID, RANK, RUN_SCHEMA, SCORE, require_columns, with_ranks
from distill.data.beir import read_lines


def read_run(path: str | Path) -> pl.DataFrame:
    """Read a TREC run as ``qid, docid, score, rank`` (ranks recomputed from scores).

    Six whitespace-separated columns are required; the score must be a finite number and a
    (qid, docid) pair may appear once.
    """
    path = Path(path)
    qids, docids, scores, seen = [], [], [], {}
    for line, text in read_lines(path):
        parts = text.split()
        if len(parts) != 6:
            raise InputError(
                f"expected 6 columns 'qid Q0 docid rank score tag', got {len(parts)}", path=path, line=line
            )
        qid, _, docid, _, score, _ = parts
        try:
            value = float(score)
        except ValueError:
            raise InputError(f"not a number: {score!r}", path=path, line=line, field="score") from None
        if not math.isfinite(value):
            raise InputError(f"not finite: {score!r}", path=path, line=line, field="score")
        if (qid, docid) in seen:
            raise InputError(
                f"duplicate document {docid!r} for query {qid!r} (first on line {seen[(qid, docid)]})",
                path=path, line=line, field="docid",
            )
        seen[(qid, docid)] = line
        qids.append(qid)
        docids.append(docid)
        scores.append(value)
    if not qids:
        raise InputError("empty run", path=path)
    run = pl.DataFrame({QID: qids, DOCID: docids, SCORE: scores}, schema=RUN_SCHEMA)
    return with_ranks(run)


def write_run(run: pl.DataFrame, path: str | Path, tag: str = "distill") -> None:
    """Write ``qid, docid, score`` as a TREC run, ranked by descending score, atomically."""
    require_columns(run, [QID, DOCID, SCORE], "run")
    ranked = with_ranks(run.with_columns(pl.col(SCORE).cast(pl.Float64)))
    lines = ranked.select(
        pl.format("{} Q0 {} {} {} " + tag, QID, DOCID, RANK, pl.col(SCORE).round(6))
    ).to_series()
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines.to_list()) + "\n", encoding="utf-8")

"""The BEIR view a run works on: a dataset's judged queries divided into ``train`` and ``valid`` (the same
ones on every machine), with documents' titles as extra judged queries for students when asked.

``distill split-view`` (:func:`distill.app.tasks.run_split_view`) and the pipeline build their view with
:func:`split_view`."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

from distill.app.pipeline_config import TITLE_SPLIT, VALID_FRACTION
from distill.core.errors import ConfigError, InputError
from distill.core.io import atomic_dir
from distill.core.outputs import check_output
from distill.data.beir import load_qrels

VIEW = "split-view"  # the output kind (distill.core.outputs.MARKERS)


def split_view(source: Path, out: Path, split: str = "train", valid_fraction: float = VALID_FRACTION,
               title_queries: int = 0, seed: int = 42, *, overwrite: bool = False) -> Path:
    """A BEIR folder at ``out`` whose ``split`` qrels are divided into ``train`` and ``valid``.

    Corpus and queries are symlinked (never copied); ``test`` qrels are linked as they are.
    A query goes to ``valid`` when ``crc32(qid) % 1000 < valid_fraction * 1000``: stable
    across machines and library versions.

    With ``title_queries=N``, N documents' titles also become queries (``title:<docid>``, judged
    relevant to their own document), written to ``queries.jsonl`` and, with ``train``'s
    queries, to ``qrels/train_titles.tsv``. Unlabelled in-domain queries cost only teacher
    time, and the teacher's scores over a title's BM25 candidates are what a student learns from.
    ``out`` may not be, hold or lie inside ``source``; it replaces only an earlier view (or ``overwrite``).
    """
    check_output(out, datasets=[source], folder=True)
    settings = {"source": str(Path(source).resolve()), "split": split, "valid_fraction": valid_fraction,
                "title_queries": title_queries, "seed": seed if title_queries else None}
    if (out / "qrels" / "valid.tsv").exists():
        recorded = out / "view.json"
        earlier = json.loads(recorded.read_text()) if recorded.exists() else settings  # older views have none
        # the source folder may have moved; the split itself must be the same
        if {k: v for k, v in earlier.items() if k != "source"} != {k: v for k, v in settings.items() if k != "source"}:
            raise ConfigError(f"{out} was built with other settings ({recorded.read_text().strip()}); "
                              f"use another --out or delete it")
        return out
    source = Path(source).resolve()
    qrels = load_qrels(source / "qrels" / f"{split}.tsv")
    cut = int(round(valid_fraction * 1000))
    is_valid = [zlib.crc32(q.encode()) % 1000 < cut for q in qrels["qid"].to_list()]
    with atomic_dir(out, kind=VIEW, overwrite=overwrite) as tmp:
        (tmp / "qrels").mkdir()
        os.symlink(source / "corpus.jsonl", tmp / "corpus.jsonl")
        for other in sorted((source / "qrels").glob("*.tsv")):
            if other.stem not in (split, "train", "valid"):
                os.symlink(other, tmp / "qrels" / other.name)
        import polars as pl

        mask = pl.Series(is_valid)
        parts = {"train": qrels.filter(~mask), "valid": qrels.filter(mask)}
        if title_queries:
            titles = _title_queries(source, title_queries, seed)
            _write_queries(tmp / "queries.jsonl", source / "queries.jsonl", titles.queries)
            parts[TITLE_SPLIT] = pl.concat([parts["train"], titles.qrels.cast(parts["train"].schema)])
        else:
            os.symlink(source / "queries.jsonl", tmp / "queries.jsonl")
        for name, part in parts.items():
            if part.height == 0:
                raise InputError(f"no {name} queries left after holding out {valid_fraction:.0%}",
                                 path=source / "qrels" / f"{split}.tsv")
            lines = ["query-id\tcorpus-id\tscore", *(f"{q}\t{d}\t{r}" for q, d, r in part.iter_rows())]
            (tmp / "qrels" / f"{name}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (tmp / "view.json").write_text(json.dumps(settings) + "\n", encoding="utf-8")
    return out


def _title_queries(source: Path, n: int, seed: int):
    """N sampled documents' titles as queries ``title:<docid>``, each judged relevant to its document."""
    from distill.data.beir import load_beir
    from teachers.train import weak_title_dataset

    dataset = load_beir(source, split=None)
    titles = weak_title_dataset(dataset, n, seed)
    clash = titles.queries.join(dataset.queries, on="qid", how="semi")
    if clash.height:
        raise InputError(f"query id {clash['qid'][0]!r} already exists: title queries need their own ids",
                         path=source / "queries.jsonl")
    return titles


def _write_queries(path: Path, original: Path, extra) -> None:
    """``original``'s lines followed by ``extra``'s queries, in BEIR's JSONL."""
    lines = [line for line in original.read_text(encoding="utf-8").splitlines() if line.strip()]
    lines += [json.dumps({"_id": q, "text": t}) for q, t in extra.iter_rows()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

"""Loading what a command works on: a dataset and a candidate run that fit each other."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from distill.core.errors import ConfigError
from distill.core.schema import DOCID, QID
from distill.data.beir import Dataset, check_ids, load_beir
from distill.data.runs import read_run


def load_dataset_and_run(
    data: Path | None, split: str | None, run: Path | None, pairs: Path | None = None, queries: Path | None = None
) -> tuple[Dataset, pl.DataFrame]:
    """Either a BEIR folder + a TREC run, or one candidate file (ms-swift JSONL / triples TSV).

    ``queries`` (a queries file without qrels, see :mod:`distill.data.querysets`) replaces the
    split's queries, or joins them when ``split`` is given too. Run ids the dataset lacks are
    an error naming the run file and line.
    """
    if pairs is not None:
        if data is not None or run is not None or queries is not None:
            raise ConfigError("give either --pairs or --data with --run, not both")
        from distill.data.pairs import read_candidates_jsonl, read_triples_tsv

        reader = read_triples_tsv if pairs.suffix.lower() in {".tsv", ".txt"} else read_candidates_jsonl
        return reader(pairs)
    if data is None or run is None:
        raise ConfigError("--data and --run are both needed (or --pairs FILE)")
    if queries is not None:
        from distill.data.querysets import load_training_queries

        dataset = load_training_queries(data, split, queries)
    else:
        dataset = load_beir(data, split)
    candidates = read_run(run)
    check_ids(candidates, dataset.queries, QID, run, "qid", f"the {split or 'all'} queries of {data}")
    check_ids(candidates, dataset.corpus, DOCID, run, "docid", f"{data}/corpus.jsonl")
    return dataset, candidates

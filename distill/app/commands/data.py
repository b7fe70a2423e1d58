"""``distill split-view`` and ``distill candidates``: the data a run starts from."""

from __future__ import annotations

from pathlib import Path

import typer

from distill.app import data_view, tasks
from distill.app.options import defaults
from distill.core.outputs import OVERWRITE_HELP

_VIEW, _CANDIDATES = defaults(data_view.split_view), defaults(tasks.run_candidates)


def register(app: typer.Typer) -> None:
    @app.command("split-view")
    def split_view(
        data: Path = typer.Option(..., help="BEIR folder to divide (left as it is)."),
        out: Path = typer.Option(..., help="BEIR folder to write; corpus and test qrels are linked, not copied."),
        split: str = typer.Option(_VIEW["split"], help="Qrels to divide into qrels/train.tsv and qrels/valid.tsv."),
        valid_fraction: float = typer.Option(_VIEW["valid_fraction"], min=0.0, max=0.9,
                                            help="Share of its queries held out as valid."),
        title_queries: int = typer.Option(_VIEW["title_queries"], min=0, help="Also N documents' titles as queries "
                                          "for their own documents, with the train queries in qrels/train_titles.tsv."),
        seed: int = typer.Option(_VIEW["seed"], help="Which documents give their titles."),
        overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    ) -> None:
        """Hold out valid queries (the same ones on every machine) and add title queries for students."""
        tasks.run_split_view(data, out, split=split, valid_fraction=valid_fraction, title_queries=title_queries,
                             seed=seed, overwrite=overwrite)

    @app.command()
    def candidates(
        data: Path = typer.Option(..., help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/)."),
        split: str = typer.Option(None, help="Queries of `qrels/<split>.tsv` [test, unless --queries]."),
        queries: Path = typer.Option(None, help="Unjudged queries (BEIR queries.jsonl or TSV `qid<TAB>text`), added "
                                     "to --split's when both are given [none]."),
        k: int = typer.Option(_CANDIDATES["k"], min=1, help="Documents per query."),
        out: Path = typer.Option(..., help="TREC run file to write."),
        add_positives: bool = typer.Option(False, help="Append judged positives BM25 missed (training lists)."),
    ) -> None:
        """Retrieve BM25 top-k candidates per query into a TREC run."""
        tasks.run_candidates(data, out, split=split, queries=queries, k=k, add_positives=add_positives)

"""``distill candidates``: first-stage BM25 runs."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def candidates(
        data: Path = typer.Option(..., help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/)."),
        split: str = typer.Option("test", help="Queries of qrels/<split>.tsv."),
        k: int = typer.Option(100, min=1, help="Documents per query."),
        out: Path = typer.Option(..., help="TREC run file to write."),
        add_positives: bool = typer.Option(False, help="Append judged positives BM25 missed (training lists)."),
    ) -> None:
        """Retrieve BM25 top-k candidates per query into a TREC run."""
        import logging

        from distill.bm25 import bm25_run
        from distill.data import load_beir
        from distill.runs import write_run

        dataset = load_beir(data, split)
        run = bm25_run(dataset, k, add_positives=add_positives)
        write_run(run, out, tag="bm25")
        logging.getLogger("distill").info("wrote %d candidates for %d queries to %s",
                                          run.height, run["qid"].n_unique(), out)

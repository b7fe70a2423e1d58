"""``distill pseudo-queries``: unlabelled in-domain training queries built from the corpus."""

from __future__ import annotations

from pathlib import Path

import typer

from distill.app import tasks
from distill.app.options import defaults

_D = defaults(tasks.run_pseudo_queries)


def register(app: typer.Typer) -> None:
    @app.command("pseudo-queries")
    def pseudo_queries(
        data: Path = typer.Option(..., help="BEIR folder (its corpus.jsonl is read)."),
        out: Path = typer.Option(..., help="queries.jsonl to write (BEIR format, no qrels)."),
        kind: str = typer.Option(_D["kind"], help="auto (a document's title, else its first sentence) | title | "
                                 "first-sentence | idf (its rarest words); several, comma-separated."),
        max_queries: int = typer.Option(None, min=1, help="At most N (a seeded sample) [one per document]."),
        seed: int = typer.Option(_D["seed"], help="Which documents, with --max-queries."),
    ) -> None:
        """One query per document from its own text, deterministic and offline: the teacher scores their
        BM25 candidates (`distill candidates --queries`), so students learn from queries nobody judged."""
        tasks.run_pseudo_queries(data, out, kind, max_queries=max_queries, seed=seed)

"""``distill serve``: a cascade behind ``POST /rerank`` under a per-request deadline (see distill.serve.app)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from distill.app import tasks
from distill.app.commands import MAX_THREADS
from distill.app.options import config_options, with_options
from distill.serve.app import ServeConfig

# every ServeConfig field with a help text is an option; these arguments only the command line knows
_API_KEY = {"envvar": "DISTILL_API_KEY", "show_envvar": True, "show_default": False}


def register(app: typer.Typer) -> None:
    @app.command()
    @with_options(config_options(ServeConfig, threads={"max": MAX_THREADS}, api_key=_API_KEY))
    def serve(
        spec: Path = typer.Argument(..., help="Cascade spec (cascade.json from `distill cascade build` or the demo)."),
        corpus: Path = typer.Option(None, help="Corpus JSONL whose document embeddings a bi-encoder stage "
                                    "precomputes (stored next to the model); unknown documents are embedded "
                                    "on the fly [none: every document is embedded on the fly]."),
        *,
        access_log: bool = typer.Option(False, help="Log every request."),
        **settings: Any,
    ) -> None:
        """Serve a cascade: POST /rerank {query, documents, top_k?, deadline_ms?}, GET /healthz, GET /metrics.
        Requests that would miss their deadline skip expensive stages; those that cannot be answered in
        time are shed with 503 and Retry-After."""
        tasks.run_serve(spec, corpus=corpus, access_log=access_log, **settings)

"""``distill serve``: a cascade behind ``POST /rerank`` under a per-request deadline (see distill.serve.app)."""

from __future__ import annotations

from pathlib import Path

import typer

from distill.app.commands import MAX_THREADS
from distill.serve.app import ServeConfig

_D = ServeConfig()  # the single source of the defaults shown below


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        spec: Path = typer.Argument(..., help="Cascade spec (cascade.json from `distill cascade build` or the demo)."),
        corpus: Path = typer.Option(None, help="Corpus JSONL whose document embeddings a bi-encoder stage "
                                    "precomputes (stored next to the model); unknown documents are embedded "
                                    "on the fly [none: every document is embedded on the fly]."),
        host: str = typer.Option(_D.host, help="Address to bind (loopback by default; another address is "
                                 "warned about: put a TLS proxy in front and set --api-key)."),
        port: int = typer.Option(_D.port, min=0, max=65535, help="Port."),
        workers: int = typer.Option(_D.workers, min=1, help="Threads running the cascade."),
        threads: int = typer.Option(_D.threads, min=1, max=MAX_THREADS, help="torch threads [torch's default]."),
        queue_size: int = typer.Option(_D.queue_size, min=1, help="Requests waiting for a worker; beyond: 503."),
        deadline_ms: float = typer.Option(_D.deadline_ms, min=0.001, help="Deadline of requests that give none."),
        max_deadline_ms: float = typer.Option(_D.max_deadline_ms, min=0.001, help="Largest deadline accepted."),
        margin_ms: float = typer.Option(_D.margin_ms, min=0.0, help="Part of each deadline kept for parsing "
                                        "and answering (not given to the cascade)."),
        cost_spreads: float = typer.Option(_D.cost_spreads, min=0.0, help="Plan each stage at its mean measured "
                                           "cost plus this many mean absolute deviations (more: fewer late answers, "
                                           "more skipped stages)."),
        max_documents: int = typer.Option(_D.max_documents, min=1, help="Documents per request."),
        max_document_chars: int = typer.Option(_D.max_document_chars, min=1, help="Characters per document."),
        max_query_chars: int = typer.Option(_D.max_query_chars, min=1, help="Characters per query."),
        max_body_bytes: int = typer.Option(_D.max_body_bytes, min=1, help="Request body size (413 beyond)."),
        max_connections: int = typer.Option(_D.max_connections, min=1, help="Open connections; at the limit the "
                                            "one receiving its request the longest is closed to make room."),
        request_timeout_s: float = typer.Option(_D.request_timeout_s, min=0.001, help="Seconds a client may take to "
                                                "send a request's headers and body (408 and closed beyond)."),
        api_key: str = typer.Option(None, envvar="DISTILL_API_KEY", show_default=False, show_envvar=True,
                                    help="Key every endpoint but /healthz requires as 'Authorization: Bearer KEY' "
                                    "(401 otherwise) [none: no authentication, for a loopback bind]."),
        docs: bool = typer.Option(_D.docs, help="Serve the API's /docs and /openapi.json."),
        access_log: bool = typer.Option(False, help="Log every request."),
    ) -> None:
        """Serve a cascade: POST /rerank {query, documents, top_k?, deadline_ms?}, GET /healthz, GET /metrics.
        Requests that would miss their deadline skip expensive stages; those that cannot be answered in
        time are shed with 503 and Retry-After."""
        from distill.serve.app import run_server

        config = ServeConfig(
            host=host, port=port, workers=workers, threads=threads, queue_size=queue_size, deadline_ms=deadline_ms,
            max_deadline_ms=max_deadline_ms, margin_ms=margin_ms, cost_spreads=cost_spreads,
            max_documents=max_documents, max_document_chars=max_document_chars, max_query_chars=max_query_chars,
            max_body_bytes=max_body_bytes, max_connections=max_connections, request_timeout_s=request_timeout_s,
            api_key=api_key, docs=docs,
        )
        run_server(spec, config, corpus=corpus, access_log=access_log)

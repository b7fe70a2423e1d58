"""Serve a cascade over HTTP under a per-request deadline (FastAPI + uvicorn).

``POST /rerank`` takes ``{query, documents, top_k?, deadline_ms?}`` and answers the ranked
``results`` with the stages that ran or were skipped; ``GET /healthz`` (503 until every stage has
run warm: :func:`warm_up_requests`) and ``GET /metrics`` (Prometheus text; degraded answers by stage and
reason among them) watch it. The standard rerank APIs are adapters over the same path
(:mod:`distill.serve.compat`): Cohere's and Jina's at ``POST /v1/rerank`` and ``POST /v2/rerank``,
Text Embeddings Inference's at ``POST /rerank`` (told apart by ``texts``). Every protection below
applies to each; a deadline may also come in the ``X-Request-Timeout-Ms`` header (the tighter of it
and the body's wins).

Dynamic reranking under SLA. The deadline counts from the moment the request reached the
server (its headers), queueing included. Requests wait in a bounded queue for a small pool
of worker threads (the cascade is thread-safe; its models release the GIL while they
compute). On arrival the server estimates the wait (requests queued or running × the
measured service time, shared by the workers) and the cost of the cheapest answer (the
cascade's first stage, from its cost model, plus a margin for answering: ``margin_ms`` and
the measured time from a worker's result to the answer on the event loop). When even that
cannot be given within the deadline, or the queue is full, the request is shed at once
with 503 and ``Retry-After``. An admitted request hands its arrival time and
a deadline to :meth:`Cascade.rank`, which skips the stages that would run past it: under
overload answers degrade (``degraded: true``, each skipped stage named) instead of arriving
late. Stages are costed by the length of the request's documents, not only their number
(:mod:`distill.inference.lengths`). The cascade decides by the cost model in its spec; the server
corrects that model with the stage times it measures (:class:`Calibration`) and steers the
cascade through the deadline it hands over (:func:`steer_deadline`). A request whose wait
turned out longer than estimated is shed when a worker picks it up and sees that its first
stage no longer fits. :class:`distill.serve.service.Service` does this work for the endpoints.

Untrusted clients: a request must arrive whole within ``request_timeout_s`` (408 and closed
otherwise; at the connection limit the slowest arriving one is evicted: :mod:`distill.serve.edge`);
with an ``api_key`` every endpoint but ``/healthz`` needs it (:mod:`distill.serve.auth`); a full
queue refuses a request before its body is parsed, and a big body is parsed in steps that let
other requests through (:mod:`distill.serve.request`). Bad requests get 422 with ``error`` naming the field
(``documents[3].text: ...``); bodies over ``max_body_bytes`` get 413; a stage whose model returns
NaN or too few scores gets 500 (counted as an error). :class:`ServeConfig` holds every limit.

This module is imported by ``distill serve`` to read :class:`ServeConfig`'s defaults, so it
imports FastAPI, pydantic, uvicorn and prometheus_client only inside the functions that need
them. (No ``from __future__ import annotations``: FastAPI resolves the endpoints' annotations,
which name classes imported inside the function defining them.)
"""

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from distill.core.errors import ConfigError
from distill.serve.admission import COST_SPREADS, Calibration, Dispatcher, Metrics, steer_deadline
from distill.serve.request import describe_error, request_model
from distill.serve.service import Service, WarmUp

__all__ = ["Calibration", "Dispatcher", "Metrics", "Rankable", "ServeConfig", "WarmUp", "create_app",
           "describe_error", "request_model", "run_server", "steer_deadline", "warm_up_requests"]

log = logging.getLogger("distill.serve.app")

_TEXT_FIELDS = {"host": "a host name or address", "api_key": "a non-empty key"}
WARM_UP_DOCUMENTS = 100  # a typical request's candidates (fewer when max_documents is lower)
TYPICAL_CHARS = 1000  # a typical passage: ~250 tokens, about the cost model's reference pair length
_WARM_UP_QUERY = "how do distilled rerankers rank passages within a deadline"
_WARM_UP_WORDS = ("passage", "ranking", "model", "query", "relevant", "document", "search", "river", "deadline",
                  "teacher", "student", "distilled", "score", "the", "of", "and", "within", "cascade")


@dataclass(frozen=True)
class ServeConfig:
    """Every limit and default of the server; the CLI's defaults come from here, and a number's bounds
    (its field's ``min``/``max`` metadata) bound both the CLI's option and this config."""

    host: str = field(default="127.0.0.1", metadata={"help": (
        "Address to bind (loopback by default; another address is warned about: put a TLS proxy in front and set "
        "--api-key).")})
    port: int = field(default=8000, metadata={"help": "Port.", "min": 0, "max": 65535})
    # each model call also uses torch's threads
    workers: int = field(default=1, metadata={"help": "Threads running the cascade.", "min": 1})
    # torch's intra-op threads in the server (None: torch's default)
    threads: int | None = field(default=None, metadata={"help": "torch threads [torch's default].", "min": 1})
    queue_size: int = field(default=64, metadata={"help": "Requests waiting for a worker; beyond: 503.", "min": 1})
    deadline_ms: float = field(default=100.0, metadata={"help": "Deadline of requests that give none.",
                                                        "min": 0.001})
    max_deadline_ms: float = field(default=60_000.0, metadata={"help": "Largest deadline accepted.", "min": 0.001})
    # the cascade's share of the deadline loses this and the measured handoff
    margin_ms: float = field(default=2.0, metadata={"help": (
        "Part of each deadline kept for parsing and answering (not given to the cascade)."), "min": 0.0})
    cost_spreads: float = field(default=COST_SPREADS, metadata={"help": (
        "Plan each stage at its mean measured cost plus this many mean absolute deviations (more: fewer late "
        "answers, more skipped stages)."), "min": 0.0})
    max_documents: int = field(default=1000, metadata={"help": "Documents per request.", "min": 1})
    max_document_chars: int = field(default=20_000, metadata={"help": "Characters per document.", "min": 1})
    max_query_chars: int = field(default=2_000, metadata={"help": "Characters per query.", "min": 1})
    max_id_chars: int = field(default=256, metadata={"min": 1})
    # 2 MiB, as Text Embeddings Inference's payload limit: 1,000 documents of ~2,000 characters, or 250 of ~8,000;
    # the character limits allow more, the body limit binds first. Measured (docs/results/serving.md): with 8 MiB,
    # beside clients posting 8 MB bodies in a loop (admitted and served), honest requests at 2x load were 96.1%
    # answered within their deadline, against 99.5% with 2 MiB, where those bodies are refused from their length.
    max_body_bytes: int = field(default=2 * 2**20, metadata={"help": "Request body size (413 beyond).", "min": 1})
    # a body's bytes are received, joined and decoded on the event loop (measured: ~27 ms of CPU per 8 MB body),
    # time taken from every other request; a typical request (100 documents) is ~150 KB. Bigger bodies are admitted
    # before they are read (distill.serve.edge.BigBodies): 1 MiB is ~1,000 documents of ~1,000 characters.
    big_body_bytes: int = field(default=2**20, metadata={"help": (
        "Bodies larger than this (declared, or once this much is read) are read --max-big-bodies at a time, and "
        "refused with 503 before they are read when the deadline known from the headers (X-Request-Timeout-Ms, "
        "else the default: a body's own deadline_ms is not known before it is read) cannot be met."), "min": 1})
    max_big_bodies: int = field(default=1, metadata={"help": (
        "Big bodies (--big-body-bytes) read and served at once; another waits, unread, for its turn within its "
        "deadline (503 beyond)."), "min": 1})
    # uvicorn accepts no more; the slowest arriving one is evicted beyond
    max_connections: int = field(default=1024, metadata={"help": (
        "Open connections; at the limit the one receiving its request the longest is closed to make room."),
        "min": 1})
    request_timeout_s: float = field(default=10.0, metadata={"help": (
        "Seconds a client may take to send a request's headers and body (408 and closed beyond)."), "min": 0.001})
    api_key: str | None = field(default=None, repr=False, metadata={"help": (
        "Key every endpoint but /healthz requires as 'Authorization: Bearer KEY' (401 otherwise) [none: no "
        "authentication, for a loopback bind].")})
    docs: bool = field(default=False, metadata={"help": "Serve the API's /docs and /openapi.json."})
    # cross-request batching of the model stages (distill.serve.batcher; docs/serving.md). Off by default: on 2 CPU
    # cores one call for 16 requests scored 0.95-1.08x the pairs/s of 16 calls, and closed-loop clients got fewer
    # full answers with it (docs/results/serving.md)
    max_batch_wait_ms: float = field(default=0.0, metadata={"help": (
        "Above 0: batch concurrent requests' model stages (a request finding the model busy shares its next call; "
        "none waits for company, so the value beyond > 0 is not used); 0: no batching, each request scored alone. "
        "Worth it on a GPU, not on a CPU (docs/serving.md)."), "min": 0.0})
    max_batch_tokens: int = field(default=8192, metadata={"help": (
        "Estimated tokens (query + document, capped at the model's max length) per batched model call."),
        "min": 1})

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _TEXT_FIELDS:
                if not isinstance(value, str) or not value.strip():
                    if f.name == "host" or value is not None:
                        raise ConfigError(f"expected {_TEXT_FIELDS[f.name]}", field=f.name)
                continue
            if "min" not in f.metadata or (value is None and f.default is None):
                continue  # not a bounded number, or an optional one left unset (threads)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"expected a number, got {value!r}", field=f.name)
            low, high = f.metadata["min"], f.metadata.get("max")  # the bounds the CLI's options state too
            if value < low or (high is not None and value > high):
                upper = "" if high is None else f" and <= {high:g}"
                raise ConfigError(f"must be >= {low:g}{upper}, got {value!r}", field=f.name)
        if self.deadline_ms > self.max_deadline_ms:
            raise ConfigError(f"the default deadline exceeds max_deadline_ms ({self.max_deadline_ms:g})",
                              field="deadline_ms")
        if self.margin_ms >= self.deadline_ms:
            raise ConfigError("the margin must be below the default deadline", field="margin_ms")


class Rankable(Protocol):
    """What the server needs of a cascade (:class:`distill.cascade.model.Cascade` provides it)."""

    def rank(self, query: str, documents: Sequence[Any], deadline_ms: float | None = None,
             top_k: int | None = None, started: float | None = None, min_score: float | None = None) -> Any: ...

    def estimate_ms(self, n_docs: int | Sequence[int]) -> list[float]:
        """Each stage's cost for ``n_docs`` documents, or for pairs of these lengths in characters."""


def create_app(cascade: Rankable, config: ServeConfig | None = None,
               clock: Callable[[], float] = time.perf_counter, warm_up: Sequence[WarmUp] | None = None) -> Any:
    """A FastAPI app serving ``cascade`` with ``config``'s limits (see the module docstring).

    ``clock`` (seconds, monotonic; the one :meth:`Cascade.rank`'s ``started`` counts on) is
    injectable so tests decide what time it is. With ``warm_up``, the app ranks those requests in a
    thread of its own once it starts, and is ready (``/healthz`` 200, rerank requests admitted) only
    when they are done (:meth:`Service.warm_up <distill.serve.service.Service.warm_up>`); without,
    it is ready at once.
    """
    from fastapi import FastAPI

    from distill.serve.auth import BearerAuth
    from distill.serve.edge import BodyReader

    config = config or ServeConfig()
    service = Service(cascade, config, clock)
    if warm_up is None:
        service.ready.set()

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if warm_up is not None:
            threading.Thread(target=service.warm_up, args=(warm_up,), name="distill-warm-up", daemon=True).start()
        yield
        service.dispatcher.close()

    hidden = {} if config.docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="distill", summary="Rerank documents with a distilled cascade within a deadline.",
                  lifespan=lifespan, **hidden)
    app.add_middleware(BodyReader, max_bytes=config.max_body_bytes, clock=clock, on_reject=service.reject)
    if config.api_key:  # outermost: a request without the key is refused before its body is read
        app.add_middleware(BearerAuth, api_key=config.api_key, on_reject=service.reject)
    app.state.metrics, app.state.dispatcher = service.metrics, service.dispatcher
    app.state.calibration, app.state.service = service.calibration, service

    _add_routes(app, service)
    return app


def _add_routes(app: Any, service: Service) -> None:
    """``app``'s endpoints, each handing its request to ``service``: ``/rerank`` (distill's and TEI's body),
    Cohere's and Jina's rerank paths, ``/healthz`` and ``/metrics``."""
    from fastapi import Request
    from fastapi.responses import JSONResponse, Response

    from distill.serve.request import openapi_body

    @app.post("/rerank", response_model=None, openapi_extra=openapi_body(service.model))
    async def rerank(request: Request) -> Response:
        """Rank the documents (or, in TEI's body, the texts) for the query within the deadline (see the
        module docstring)."""
        return await service.handle(request, service.model, service.tei)

    def cohere_route(path: str, model: type) -> None:
        async def rerank_cohere(request: Request) -> Response:
            """Rank the documents for the query within the deadline, in Cohere's API (distill.serve.compat)."""
            return await service.handle(request, model)

        app.add_api_route(path, rerank_cohere, methods=["POST"], response_model=None, name=model.api,
                          openapi_extra=openapi_body(model, path))

    for path, model in service.cohere.items():
        cohere_route(path, model)

    @app.get("/healthz", response_model=None)
    async def healthz() -> Response:
        """Readiness (200 once warm, 503 while starting), the cascade served, the pool's state and the
        degraded answers by stage and reason."""
        health = service.health()
        return JSONResponse(health, status_code=200 if health["status"] == "ok" else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        """Prometheus text exposition of :class:`Metrics`."""
        data, content_type = service.metrics.render()
        return Response(data, media_type=content_type)


def warm_up_requests(config: ServeConfig, corpus: str | Path | None = None) -> list[WarmUp]:
    """Typical requests to warm the stages on: :data:`WARM_UP_DOCUMENTS` new documents of
    :data:`TYPICAL_CHARS` characters (within ``config``'s limits), and as many of ``corpus``'s first
    documents (a ``corpus.jsonl`` or BEIR folder) when there is one. Each has first-stage scores."""
    n, chars = min(WARM_UP_DOCUMENTS, config.max_documents), min(TYPICAL_CHARS, config.max_document_chars)
    new = []
    for i in range(n):
        words = (_WARM_UP_WORDS[(i * 7 + k * 5) % len(_WARM_UP_WORDS)] for k in range(chars))
        new.append({"id": f"warm-up-{i}", "text": " ".join(words)[:chars].strip(), "score": float(n - i)})
    requests = [WarmUp("new documents", _WARM_UP_QUERY, new)]
    if corpus is not None:
        from distill.data.beir import read_jsonl

        path = Path(corpus)
        known: list[dict[str, Any]] = []
        for _, doc in read_jsonl(path / "corpus.jsonl" if path.is_dir() else path):
            title = {"title": doc["title"]} if doc.get("title") else {}
            known.append({"id": str(doc["_id"]), **title, "text": doc.get("text") or "",
                          "score": float(n - len(known))})
            if len(known) == n:
                break
        if known:  # sent with the corpus's text: the runtime takes them for the corpus's documents
            requests.append(WarmUp("corpus documents", _WARM_UP_QUERY, known, new_documents=False))
    return requests


def run_server(spec: str | Path, config: ServeConfig | None = None, corpus: str | Path | None = None,
               access_log: bool = False) -> None:
    """Load the cascade in ``spec`` (with ``corpus``'s precomputed embeddings) and serve it until stopped
    (over :class:`distill.serve.edge.TimedH11Protocol`; a warning when the bind reaches other machines).
    It reports ready once every stage has run warm on typical requests (:func:`warm_up_requests`), and
    logs each stage's cost against the default deadline first."""
    import uvicorn

    from distill.cascade.model import Cascade
    from distill.serve.auth import bind_warning
    from distill.serve.edge import uvicorn_config

    config = config or ServeConfig()
    warning = bind_warning(config.host, config.api_key)
    if warning:
        log.warning(warning)
    if config.threads is not None:
        import torch

        torch.set_num_threads(config.threads)
    cascade = Cascade.load(spec, corpus=corpus)
    log.info("serving %s on http://%s:%d (workers %d, queue %d, default deadline %g ms); ready after the warm-up",
             cascade, config.host, config.port, config.workers, config.queue_size, config.deadline_ms)
    app = create_app(cascade, config, warm_up=warm_up_requests(config, corpus))
    uvicorn.Server(uvicorn_config(app, config, access_log)).run()

"""Serve a cascade over HTTP under a per-request deadline (FastAPI + uvicorn).

``POST /rerank`` takes ``{query, documents, top_k?, deadline_ms?}`` and answers the ranked
``results`` with the stages that ran or were skipped; ``GET /healthz`` and ``GET /metrics``
(Prometheus text) watch it.

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
stage no longer fits.

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
which name classes imported inside :func:`create_app`.)
"""

import logging
import math
import time
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from distill.core.errors import ConfigError, DistillError
from distill.serve.admission import Calibration, Dispatcher, Metrics, steer_deadline
from distill.serve.request import describe_error, request_model

__all__ = ["Calibration", "Dispatcher", "Metrics", "Rankable", "ServeConfig", "create_app", "describe_error",
           "request_model", "run_server", "steer_deadline"]

log = logging.getLogger("distill.serve.app")

_TEXT_FIELDS = {"host": "a host name or address", "api_key": "a non-empty key"}


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
    cost_spreads: float = field(default=2.0, metadata={"help": (
        "Plan each stage at its mean measured cost plus this many mean absolute deviations (more: fewer late "
        "answers, more skipped stages)."), "min": 0.0})
    max_documents: int = field(default=1000, metadata={"help": "Documents per request.", "min": 1})
    max_document_chars: int = field(default=20_000, metadata={"help": "Characters per document.", "min": 1})
    max_query_chars: int = field(default=2_000, metadata={"help": "Characters per query.", "min": 1})
    max_id_chars: int = field(default=256, metadata={"min": 1})
    # 8 MiB: 1,000 documents of ~8,000 characters; the character limits allow more (1,000 x 20,000), the body
    # limit binds first. A big body is parsed in steps (serve.stepwise_json), so it need not be lower to keep the
    # event loop responsive.
    max_body_bytes: int = field(default=8 * 2**20, metadata={"help": "Request body size (413 beyond).", "min": 1})
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
             top_k: int | None = None, started: float | None = None) -> Any: ...

    def estimate_ms(self, n_docs: int | Sequence[int]) -> list[float]:
        """Each stage's cost for ``n_docs`` documents, or for pairs of these lengths in characters."""


class _Service:
    """The endpoints' work: admission, the handoff to a worker and the answers (module docstring)."""

    def __init__(self, cascade: Rankable, config: ServeConfig, clock: Callable[[], float]) -> None:
        from distill.cascade.runtime import ModelFault

        self.cascade, self.config, self.clock, self.fault = cascade, config, clock, ModelFault
        self.metrics = Metrics()
        self.dispatcher = Dispatcher(config.workers, config.queue_size, self.metrics)
        self.calibration = Calibration(clock, spreads=config.cost_spreads)
        self.model = request_model(config)

    def ms_since(self, arrival: float) -> float:
        return (self.clock() - arrival) * 1000.0

    def reject(self, reason: str) -> None:
        """Count a request refused before parsing (``distill_rejected_total``)."""
        self.metrics.rejected.labels(reason).inc()

    def answer(self, status: int, body: dict[str, Any], outcome: str, arrival: float,
               headers: dict[str, str] | None = None) -> Any:
        from fastapi.responses import JSONResponse

        self.metrics.requests.labels(outcome).inc()
        self.metrics.latency.labels(outcome).observe(self.ms_since(arrival) / 1000.0)
        return JSONResponse(body, status_code=status, headers=headers)

    def shed(self, reason: str, why: str, wait_ms: float, arrival: float) -> Any:
        self.metrics.shed.labels(reason).inc()
        retry_s = max(1, math.ceil(wait_ms / 1000.0))
        return self.answer(503, {"error": f"overloaded ({reason}): {why}", "retry_after_s": retry_s}, "shed",
                           arrival, {"Retry-After": str(retry_s)})

    def expired(self, sent: Any, arrival: float) -> bool:
        """Whether even an answer without any stage would be late: the time since arrival plus the
        margin exceeds the deadline ``sent`` (the default where it is not a usable number)."""
        config = self.config
        usable = isinstance(sent, (int, float)) and not isinstance(sent, bool) and 0 < sent <= config.max_deadline_ms
        deadline = float(sent) if usable else config.deadline_ms
        return self.ms_since(arrival) + self.dispatcher.margin_ms(config.margin_ms) > deadline

    def costs(self, body: Any, documents: list[dict[str, Any]]) -> list[float]:
        """Each stage's modelled cost for this request's pairs, by their length in characters."""
        pair_chars = [len(body.query) + len(d.get("title", "")) + len(d.get("text", "")) for d in documents]
        return [float(c) for c in self.cascade.estimate_ms(pair_chars)]

    async def rerank(self, raw: bytes, arrival: float) -> Any:
        """Admit (a full queue refuses before the body is parsed), parse, admit by the deadline,
        run in a worker and answer (see the module docstring)."""
        from distill.serve.request import parse_request

        dispatcher = self.dispatcher
        if dispatcher.full():
            return self.shed("queue_full", f"{self.config.queue_size} requests are waiting",
                             dispatcher.wait_ms(0.0), arrival)
        body, invalid = await parse_request(self.model, raw, lambda sent: self.expired(sent, arrival))
        if invalid is not None:
            return self.answer(422, invalid, "invalid", arrival)
        if body is None:
            return self.shed("deadline", "the body took longer to arrive and decode than the deadline allows",
                             dispatcher.wait_ms(0.0), arrival)
        deadline = self.config.deadline_ms if body.deadline_ms is None else body.deadline_ms
        documents = body.cascade_documents()
        costs = self.costs(body, documents)
        margin = dispatcher.margin_ms(self.config.margin_ms)
        cheapest = costs[0] + margin
        wait = dispatcher.wait_ms(sum(costs))
        if dispatcher.full():
            return self.shed("queue_full", f"{self.config.queue_size} requests are waiting", wait, arrival)
        if self.ms_since(arrival) + wait + cheapest > deadline:
            return self.shed("deadline", f"expected wait {wait:.1f} ms + cheapest answer {cheapest:.1f} ms "
                             f"exceeds the deadline of {deadline:g} ms", wait, arrival)

        def work() -> Any:
            begin = self.clock()
            elapsed = (begin - arrival) * 1000.0
            if elapsed + cheapest > deadline:
                return None
            steered, _ = steer_deadline(elapsed, deadline - margin, costs, self.calibration.get(len(costs)))
            result = self.cascade.rank(body.query, documents, deadline_ms=steered, top_k=body.top_k,
                                       started=arrival)
            finished = self.clock()
            dispatcher.measured(service_ms=(finished - begin) * 1000.0)
            self.calibration.observe(costs, result.stages)
            return result, finished

        return await self.run(work, deadline, costs, arrival)

    async def run(self, work: Callable[[], Any], deadline: float, costs: list[float], arrival: float) -> Any:
        """``work`` in a worker, answered: 200, 503 (late), 422 (a document the cascade cannot
        read) or 500 (a model fault or a bug, logged; the server keeps serving)."""
        try:
            result = await self.dispatcher.submit(work)
        except DistillError as err:
            field_ = f"{err.field}: " if err.field else ""
            return self.answer(422, {"error": f"{field_}{err.message}"}, "invalid", arrival)
        except self.fault as err:
            log.error("model fault: %s", err)
            return self.answer(500, {"error": f"model fault: {err}"}, "error", arrival)
        except Exception:  # a bug in a stage must not take the server down
            log.exception("ranking failed")
            return self.answer(500, {"error": "internal error while ranking (see the server log)"}, "error",
                               arrival)
        if result is None:
            return self.shed("late", f"the queue took longer than expected; the first stage no longer fits "
                             f"the deadline of {deadline:g} ms", self.dispatcher.wait_ms(sum(costs)), arrival)
        result, finished = result
        self.dispatcher.measured(handoff_ms=(self.clock() - finished) * 1000.0)
        return self.respond(result, deadline, arrival)

    def respond(self, result: Any, deadline: float, arrival: float) -> Any:
        stages = [{"name": s.name, "ran": bool(s.ran), "ms": float(s.ms), "n_in": int(s.n_in),
                   "n_out": int(s.n_out), "skipped": s.skipped} for s in result.stages]
        for s in stages:
            if s["ran"]:
                self.metrics.stage_latency.labels(s["name"]).observe(s["ms"] / 1000.0)
            else:
                self.metrics.skipped.labels(s["name"]).inc()
        degraded = any(not s["ran"] for s in stages)
        elapsed = self.ms_since(arrival)
        if elapsed > deadline:
            self.metrics.late.inc()
        body = {"results": [{"id": str(i), "score": float(s)} for i, s in zip(result.ids, result.scores)],
                "stages": stages, "degraded": degraded, "deadline_ms": deadline, "elapsed_ms": round(elapsed, 3)}
        return self.answer(200, body, "degraded" if degraded else "ok", arrival)

    def health(self) -> dict[str, Any]:
        d, calibration = self.dispatcher, self.calibration
        return {"status": "ok", "cascade": str(self.cascade), "workers": self.config.workers,
                "queue_depth": d.queued, "busy_workers": d.busy, "service_ms": d.service_ms,
                "handoff_ms": d.handoff_ms, "cost_factors": calibration.get(len(calibration.means))}


def create_app(cascade: Rankable, config: ServeConfig | None = None,
               clock: Callable[[], float] = time.perf_counter) -> Any:
    """A FastAPI app serving ``cascade`` with ``config``'s limits (see the module docstring).

    ``clock`` (seconds, monotonic; the one :meth:`Cascade.rank`'s ``started`` counts on) is
    injectable so tests decide what time it is.
    """
    from fastapi import FastAPI, Request
    from fastapi.responses import Response

    from distill.serve.auth import BearerAuth
    from distill.serve.edge import BodyReader
    from distill.serve.request import openapi_body

    config = config or ServeConfig()
    service = _Service(cascade, config, clock)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        service.dispatcher.close()

    hidden = {} if config.docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="distill", summary="Rerank documents with a distilled cascade within a deadline.",
                  lifespan=lifespan, **hidden)
    app.add_middleware(BodyReader, max_bytes=config.max_body_bytes, clock=clock, on_reject=service.reject)
    if config.api_key:  # outermost: a request without the key is refused before its body is read
        app.add_middleware(BearerAuth, api_key=config.api_key, on_reject=service.reject)
    app.state.metrics, app.state.dispatcher = service.metrics, service.dispatcher
    app.state.calibration = service.calibration

    @app.post("/rerank", response_model=None, openapi_extra=openapi_body(service.model))
    async def rerank(request: Request) -> Response:
        """Rank the documents for the query within the deadline (see the module docstring)."""
        return await service.rerank(await request.body(), request.state.arrival)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness, the cascade served and the pool's state."""
        return service.health()

    @app.get("/metrics")
    async def prometheus() -> Response:
        """Prometheus text exposition of :class:`Metrics`."""
        data, content_type = service.metrics.render()
        return Response(data, media_type=content_type)

    return app


def run_server(spec: str | Path, config: ServeConfig | None = None, corpus: str | Path | None = None,
               access_log: bool = False) -> None:
    """Load the cascade in ``spec`` (with ``corpus``'s precomputed embeddings), warm it up with one
    request so the first client does not pay for lazy initialisation, and serve it until stopped
    (over :class:`distill.serve.edge.TimedH11Protocol`; a warning when the bind reaches other machines)."""
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
    cascade.rank("warm up", [{"id": "a", "text": "a document to warm up the stages", "score": 2.0},
                             {"id": "b", "text": "another one", "score": 1.0}])  # scores: some stages need them
    log.info("serving %s on http://%s:%d (workers %d, queue %d, default deadline %g ms)", cascade, config.host,
             config.port, config.workers, config.queue_size, config.deadline_ms)
    uvicorn.Server(uvicorn_config(create_app(cascade, config), config, access_log)).run()

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
late. The cascade decides by the cost model in its spec; the server corrects that model
with the stage times it measures (:class:`Calibration`) and steers the cascade through the
deadline it hands over (:func:`steer_deadline`). A request whose wait turned out longer
than estimated is shed when a worker picks it up and sees that its first stage no longer fits.

Bad requests get 422 with ``error`` naming the field (``documents[3].text: ...``); bodies
over ``max_body_bytes`` get 413. :class:`ServeConfig` holds every limit and default.

This module is imported by ``distill serve`` to read :class:`ServeConfig`'s defaults, so it
imports FastAPI, pydantic and prometheus_client only inside the functions that need them.
(No ``from __future__ import annotations``: FastAPI resolves the endpoint's annotations,
which name models built inside :func:`create_app`.)
"""

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol

from distill.errors import ConfigError, DistillError

log = logging.getLogger("distill.serve")

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
SERVICE_EWMA = 0.2  # weight of the newest measurement in the service-time average


@dataclass(frozen=True)
class ServeConfig:
    """Every limit and default of the server; the CLI's defaults come from here."""

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1  # threads running the cascade; each model call also uses torch's threads
    threads: int | None = None  # torch's intra-op threads in the server (None: torch's default)
    queue_size: int = 64  # admitted requests waiting for a worker; beyond that: 503
    deadline_ms: float = 100.0  # when a request gives none
    max_deadline_ms: float = 60_000.0
    margin_ms: float = 2.0  # kept from the cascade's share of the deadline for answering (plus the measured handoff)
    cost_spreads: float = 2.0  # stages are planned at their mean measured cost + this many mean abs. deviations
    max_documents: int = 1000
    max_document_chars: int = 20_000
    max_query_chars: int = 2_000
    max_id_chars: int = 256
    max_body_bytes: int = 8 * 2**20
    max_connections: int = 1024  # open connections uvicorn accepts before answering 503 itself

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "host":
                if not isinstance(value, str) or not value:
                    raise ConfigError("expected a host name or address", field="host")
                continue
            if f.name == "threads" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"expected a number, got {value!r}", field=f.name)
            low = 0 if f.name in ("port", "margin_ms", "cost_spreads") else 1
            if value < low or (f.name == "port" and value > 65535):
                raise ConfigError(f"must be >= {low}{' and <= 65535' if f.name == 'port' else ''}, got {value!r}",
                                  field=f.name)
        if self.deadline_ms > self.max_deadline_ms:
            raise ConfigError(f"the default deadline exceeds max_deadline_ms ({self.max_deadline_ms:g})",
                              field="deadline_ms")
        if self.margin_ms >= self.deadline_ms:
            raise ConfigError("the margin must be below the default deadline", field="margin_ms")


class Rankable(Protocol):
    """What the server needs of a cascade (:class:`distill.cascade.Cascade` provides it)."""

    def rank(self, query: str, documents: Sequence[Any], deadline_ms: float | None = None,
             top_k: int | None = None, started: float | None = None) -> Any: ...

    def estimate_ms(self, n_docs: int) -> list[float]: ...


# -- requests -------------------------------------------------------------------------------


def request_model(config: ServeConfig) -> type:
    """The ``/rerank`` body as a pydantic model with ``config``'s limits.

    A document is a string or ``{id?, title?, text?, score?}``; a string's id (and an
    object's without one) is its position. Without a text, the id must name a document of
    the served corpus (the cascade checks that). Types are strict (``"5"`` is not a ``top_k``).
    """
    from typing import Annotated

    from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

    class Document(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)

        id: Annotated[str, Field(min_length=1, max_length=config.max_id_chars)] | None = None
        title: Annotated[str, Field(max_length=config.max_document_chars)] | None = None
        text: Annotated[str, Field(max_length=config.max_document_chars)] | None = None
        score: Annotated[float, Field(allow_inf_nan=False)] | None = None

        @model_validator(mode="before")
        @classmethod
        def _from_text(cls, value: Any) -> Any:
            if isinstance(value, str):
                return {"text": value}
            if not isinstance(value, dict):
                raise ValueError("a document is a string or an object {id?, title?, text?, score?}")
            return value

    class RerankRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)

        query: Annotated[str, Field(min_length=1, max_length=config.max_query_chars)]
        documents: Annotated[list[Document], Field(max_length=config.max_documents)]
        top_k: Annotated[int, Field(ge=1)] | None = None
        deadline_ms: Annotated[float, Field(gt=0, le=config.max_deadline_ms, allow_inf_nan=False)] | None = None

        @field_validator("query")
        @classmethod
        def _not_blank(cls, query: str) -> str:
            if not query.strip():
                raise ValueError("the query is blank")
            return query

        @field_validator("documents")
        @classmethod
        def _consistent(cls, documents: list[Document]) -> list[Document]:
            seen: set[str] = set()
            with_score = bool(documents) and documents[0].score is not None
            for i, doc in enumerate(documents):
                doc_id = doc.id if doc.id is not None else str(i)
                if doc_id in seen:
                    raise ValueError(f"documents[{i}].id: duplicate id {doc_id!r}")
                seen.add(doc_id)
                if (doc.score is not None) != with_score:
                    raise ValueError(f"documents[{i}].score: give a score for every document or for none")
            return documents

        def cascade_documents(self) -> list[dict[str, Any]]:
            """The documents as the cascade takes them: ``{id, title?, text?, score?}`` dicts."""
            return [{"id": str(i), **d.model_dump(exclude_none=True)} for i, d in enumerate(self.documents)]

    return RerankRequest


def describe_error(error: dict[str, Any]) -> str:
    """One line naming the field of a pydantic/FastAPI validation error: ``documents[3].text: ...``."""
    loc = [part for part in error.get("loc", ()) if part != "body"]
    if error.get("type") == "json_invalid":
        reason = (error.get("ctx") or {}).get("error", "")
        return f"body: invalid JSON at character {loc[0] if loc else 0}: {reason}".rstrip(": ")
    where = "body"
    if loc:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    message = str(error.get("msg", "invalid"))
    if message.startswith("Value error, "):  # our validators' messages may name a deeper field
        message = message.removeprefix("Value error, ")
        if ": " in message and message.split(": ", 1)[0].startswith(where + "["):
            return message
    return f"{where}: {message}"


# -- metrics --------------------------------------------------------------------------------


class Metrics:
    """The server's Prometheus metrics, in a registry of their own (not the process-global one)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("distill_requests", "Requests to /rerank by outcome "
                                "(ok, degraded, shed, invalid, error).", ["outcome"], registry=self.registry)
        self.latency = Histogram("distill_request_seconds", "Time from arrival to answer of /rerank requests, "
                                 "by outcome.", ["outcome"], buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.stage_latency = Histogram("distill_stage_seconds", "Time a cascade stage took for one request.",
                                       ["stage"], buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.skipped = Counter("distill_stage_skipped", "Stages skipped to meet a deadline.", ["stage"],
                               registry=self.registry)
        self.shed = Counter("distill_shed", "Requests shed with 503 (queue_full, deadline: at arrival; "
                            "late: when a worker took them).", ["reason"], registry=self.registry)
        self.late = Counter("distill_late_answers", "Answers (200) given after their deadline.",
                            registry=self.registry)
        self.queue_depth = Gauge("distill_queue_depth", "Admitted requests waiting for a worker.",
                                 registry=self.registry)
        self.busy = Gauge("distill_busy_workers", "Workers running the cascade.", registry=self.registry)
        self.service = Gauge("distill_service_ms", "Moving average of a request's time in a worker (ms).",
                             registry=self.registry)
        self.handoff = Gauge("distill_handoff_ms", "Moving average of the time from a worker's result to "
                             "the answer (ms).", registry=self.registry)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


# -- calibrated costs -----------------------------------------------------------------------


class Calibration:
    """Per stage, a moving average of measured ms / the cascade's modelled ms, and of its spread.

    The cost model in a spec was measured when the cascade was built, often on another
    load; on a busy server stages run slower (or faster) than it says. Skipping by the
    model alone would let answers arrive late, so the server corrects it with what it
    measures (:func:`steer_deadline`): a stage is planned at its mean ratio plus ``spreads``
    mean absolute deviations, so one slow run does not make the answer late. A factor is
    only measured when its stage runs, so one inflated by a burst could keep its stage
    skipped for good: while its stage is not measured, it fades (half-life ``half_life_s``)
    towards the lowest ratio measured for the stage, until the stage fits and is measured anew."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter, spreads: float = 2.0,
                 half_life_s: float = 30.0, lowest: float = 0.05, highest: float = 50.0) -> None:
        self.clock, self.spreads, self.half_life_s = clock, spreads, half_life_s
        self.lowest, self.highest = lowest, highest
        self.means: list[float] = []
        self.deviations: list[float] = []
        self.best: list[float | None] = []  # lowest ratio measured; None: never measured
        self.measured_at: list[float] = []
        self._lock = threading.Lock()

    def _faded(self, now: float) -> list[tuple[float, float]]:
        """Each stage's (mean, deviation), faded by the time since the stage was last measured."""
        out = []
        for mean, dev, best, at in zip(self.means, self.deviations, self.best, self.measured_at):
            keep = 0.5 ** ((now - at) / self.half_life_s)
            out.append((mean, dev) if best is None else (best + (mean - best) * keep, dev * keep))
        return out

    def get(self, n_stages: int) -> list[float]:
        """Each stage's planning factor: mean + ``spreads`` deviations (1 for a stage never measured)."""
        now = self.clock()
        with self._lock:
            factors = [mean + self.spreads * dev for mean, dev in self._faded(now)]
        return (factors + [1.0] * n_stages)[:n_stages]

    def observe(self, modelled_ms: Sequence[float], stages: Sequence[Any]) -> None:
        """Fold in the stages that ran with a modelled cost (a replayed first stage has none)."""
        now = self.clock()
        with self._lock:
            grow = len(stages) - len(self.means)
            self.means += [1.0] * grow
            self.deviations += [0.0] * grow
            self.best += [None] * grow
            self.measured_at += [now] * grow
            current = self._faded(now)
            for i, (model, stage) in enumerate(zip(modelled_ms, stages)):
                if stage.ran and model > 0:
                    ratio = min(max(stage.ms / model, self.lowest), self.highest)
                    mean, dev = current[i]
                    self.deviations[i] = (1 - SERVICE_EWMA) * dev + SERVICE_EWMA * abs(ratio - mean)
                    self.means[i] = (1 - SERVICE_EWMA) * mean + SERVICE_EWMA * ratio
                    self.best[i] = ratio if self.best[i] is None else min(self.best[i], ratio)
                    self.measured_at[i] = now


def steer_deadline(elapsed_ms: float, deadline_ms: float, modelled_ms: Sequence[float],
                   factors: Sequence[float]) -> tuple[float, int]:
    """The deadline to hand :meth:`Cascade.rank` so that its own rule (skip stage j when the
    time spent plus stage j's *modelled* cost exceeds the deadline) runs the stages that fit
    by the *calibrated* costs, and the number of stages planned.

    Plan: from ``elapsed_ms``, stage j >= 1 runs while its calibrated end ``t_j + f_j m_j``
    stays within ``deadline_ms``. The deadline handed over must reach every planned stage's
    modelled end ``t_j + m_j`` (``lower``); when stage k does not fit it must stay below
    ``t_k + m_k`` (``upper``): the middle of the two, so timing noise either way keeps the
    plan (where the model is so pessimistic that the two cross, the cascade stops earlier
    than planned, never later). When every stage fits, the modelled ends plus the slack the
    calibrated plan leaves, and never less than ``deadline_ms``.
    """
    t = lower = elapsed_ms
    for j in range(1, len(modelled_ms)):
        if t + factors[j] * modelled_ms[j] > deadline_ms:
            return (lower + t + modelled_ms[j]) / 2, j
        lower = max(lower, t + modelled_ms[j])
        t += factors[j] * modelled_ms[j]
    return max(deadline_ms, lower + deadline_ms - t), len(modelled_ms)


# -- the worker pool ------------------------------------------------------------------------


class Dispatcher:
    """A bounded worker pool and queue, with the wait estimate that admission control uses."""

    def __init__(self, config: ServeConfig, metrics: Metrics) -> None:
        self.workers = config.workers
        self.queue_size = config.queue_size
        self.metrics = metrics
        self.pool = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="distill-serve")
        self._lock = threading.Lock()
        self.queued = 0
        self.busy = 0
        self.service_ms: float | None = None
        self.handoff_ms = 0.0

    def margin_ms(self, configured: float) -> float:
        """Time to keep for answering: ``configured`` plus the measured handoff from a worker to
        the event loop (which grows when the machine is busy)."""
        with self._lock:
            return configured + self.handoff_ms

    def wait_ms(self, fallback_service_ms: float) -> float:
        """Expected wait for a worker: the requests ahead beyond the free workers, each taking the
        measured service time (``fallback_service_ms`` until one was measured), shared by the workers."""
        with self._lock:
            ahead = self.queued + self.busy
            service = fallback_service_ms if self.service_ms is None else self.service_ms
        return max(0, ahead - self.workers + 1) * service / self.workers

    def full(self) -> bool:
        with self._lock:
            return self.queued >= self.queue_size

    def submit(self, work: Callable[[], Any]) -> "asyncio.Future[Any]":
        """Queue ``work`` for a worker (the caller checked :meth:`full`)."""
        with self._lock:
            self.queued += 1
            self.metrics.queue_depth.set(self.queued)

        def run() -> Any:
            with self._lock:
                self.queued -= 1
                self.busy += 1
                self.metrics.queue_depth.set(self.queued)
                self.metrics.busy.set(self.busy)
            try:
                return work()
            finally:
                with self._lock:
                    self.busy -= 1
                    self.metrics.busy.set(self.busy)

        return asyncio.get_running_loop().run_in_executor(self.pool, run)

    def measured(self, service_ms: float | None = None, handoff_ms: float | None = None) -> None:
        """Fold one request's time in a worker, or from its result to its answer, into their averages."""
        with self._lock:
            if service_ms is not None:
                old = service_ms if self.service_ms is None else self.service_ms
                self.service_ms = (1 - SERVICE_EWMA) * old + SERVICE_EWMA * service_ms
                self.metrics.service.set(self.service_ms)
            if handoff_ms is not None:
                self.handoff_ms = (1 - SERVICE_EWMA) * self.handoff_ms + SERVICE_EWMA * handoff_ms
                self.metrics.handoff.set(self.handoff_ms)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


# -- the app --------------------------------------------------------------------------------


class _Receipt:
    """ASGI middleware: stamps each request's arrival (``request.state.arrival``, the start of its
    deadline) and reads its body up to ``max_bytes`` (413 beyond), so no body is held unbounded."""

    def __init__(self, app: Any, max_bytes: int, clock: Callable[[], float]) -> None:
        self.app, self.max_bytes, self.clock = app, max_bytes, clock

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})["arrival"] = self.clock()
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._too_large(send)
                return
            more = message.get("more_body", False)
        body = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay() -> dict:
            return body.pop() if body else await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Callable) -> None:
        from starlette.responses import JSONResponse

        error = f"body: larger than {self.max_bytes} bytes"
        response = JSONResponse({"error": error, "detail": [{"loc": ["body"], "msg": error}]}, status_code=413)
        await response({"type": "http"}, None, send)


def create_app(cascade: Rankable, config: ServeConfig | None = None,
               clock: Callable[[], float] = time.perf_counter) -> Any:
    """A FastAPI app serving ``cascade`` with ``config``'s limits (see the module docstring).

    ``clock`` (seconds, monotonic; the one :meth:`Cascade.rank`'s ``started`` counts on) is
    injectable so tests decide what time it is.
    """
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response

    config = config or ServeConfig()
    metrics = Metrics()
    dispatcher = Dispatcher(config, metrics)
    calibration = Calibration(clock, spreads=config.cost_spreads)
    RerankRequest = request_model(config)  # noqa: N806 (a class)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        dispatcher.close()

    app = FastAPI(title="distill", summary="Rerank documents with a distilled cascade within a deadline.",
                  lifespan=lifespan)
    app.add_middleware(_Receipt, max_bytes=config.max_body_bytes, clock=clock)
    app.state.metrics, app.state.dispatcher, app.state.calibration = metrics, dispatcher, calibration

    def ms_since(arrival: float) -> float:
        return (clock() - arrival) * 1000.0

    def answer(status: int, body: dict[str, Any], outcome: str, arrival: float,
               headers: dict[str, str] | None = None) -> JSONResponse:
        metrics.requests.labels(outcome).inc()
        metrics.latency.labels(outcome).observe(ms_since(arrival) / 1000.0)
        return JSONResponse(body, status_code=status, headers=headers)

    def shed(reason: str, why: str, wait_ms: float, arrival: float) -> JSONResponse:
        metrics.shed.labels(reason).inc()
        retry_s = max(1, math.ceil(wait_ms / 1000.0))
        return answer(503, {"error": f"overloaded ({reason}): {why}", "retry_after_s": retry_s}, "shed", arrival,
                      {"Retry-After": str(retry_s)})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k in ("type", "loc", "msg")} for e in exc.errors()]
        lines = [describe_error(e) for e in exc.errors()]
        arrival = getattr(request.state, "arrival", clock())
        return answer(422, {"error": "; ".join(lines[:5]), "detail": errors[:20]}, "invalid", arrival)

    @app.post("/rerank")
    async def rerank(body: RerankRequest, request: Request) -> JSONResponse:
        """Rank the documents for the query within the deadline (see the module docstring)."""
        arrival = request.state.arrival
        deadline = config.deadline_ms if body.deadline_ms is None else body.deadline_ms
        documents = body.cascade_documents()
        costs = [float(c) for c in cascade.estimate_ms(len(documents))]
        margin = dispatcher.margin_ms(config.margin_ms)
        cheapest = costs[0] + margin
        wait = dispatcher.wait_ms(sum(costs))
        if dispatcher.full():
            return shed("queue_full", f"{config.queue_size} requests are waiting", wait, arrival)
        if ms_since(arrival) + wait + cheapest > deadline:
            return shed("deadline", f"expected wait {wait:.1f} ms + cheapest answer {cheapest:.1f} ms exceeds "
                        f"the deadline of {deadline:g} ms", wait, arrival)

        def work() -> Any:
            begin = clock()
            elapsed = (begin - arrival) * 1000.0
            if elapsed + cheapest > deadline:
                return None
            steered, _ = steer_deadline(elapsed, deadline - margin, costs, calibration.get(len(costs)))
            result = cascade.rank(body.query, documents, deadline_ms=steered, top_k=body.top_k, started=arrival)
            finished = clock()
            dispatcher.measured(service_ms=(finished - begin) * 1000.0)
            calibration.observe(costs, result.stages)
            return result, finished

        try:
            result = await dispatcher.submit(work)
        except DistillError as err:
            field = f"{err.field}: " if err.field else ""
            return answer(422, {"error": f"{field}{err.message}"}, "invalid", arrival)
        except Exception:  # a bug in a stage must not take the server down
            log.exception("ranking failed")
            return answer(500, {"error": "internal error while ranking (see the server log)"}, "error", arrival)
        if result is None:
            return shed("late", f"the queue took longer than expected; the first stage no longer fits "
                        f"the deadline of {deadline:g} ms", dispatcher.wait_ms(sum(costs)), arrival)
        result, finished = result
        dispatcher.measured(handoff_ms=(clock() - finished) * 1000.0)
        return respond(result, deadline, arrival)

    def respond(result: Any, deadline: float, arrival: float) -> JSONResponse:
        stages = [{"name": s.name, "ran": bool(s.ran), "ms": float(s.ms), "n_in": int(s.n_in),
                   "n_out": int(s.n_out), "skipped": s.skipped} for s in result.stages]
        for s in stages:
            if s["ran"]:
                metrics.stage_latency.labels(s["name"]).observe(s["ms"] / 1000.0)
            else:
                metrics.skipped.labels(s["name"]).inc()
        degraded = any(not s["ran"] for s in stages)
        elapsed = ms_since(arrival)
        if elapsed > deadline:
            metrics.late.inc()
        body = {"results": [{"id": str(i), "score": float(s)} for i, s in zip(result.ids, result.scores)],
                "stages": stages, "degraded": degraded, "deadline_ms": deadline, "elapsed_ms": round(elapsed, 3)}
        return answer(200, body, "degraded" if degraded else "ok", arrival)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness, the cascade served and the pool's state."""
        return {"status": "ok", "cascade": str(cascade), "workers": config.workers,
                "queue_depth": dispatcher.queued, "busy_workers": dispatcher.busy,
                "service_ms": dispatcher.service_ms, "handoff_ms": dispatcher.handoff_ms,
                "cost_factors": calibration.get(len(calibration.means))}

    @app.get("/metrics")
    async def prometheus() -> Response:
        """Prometheus text exposition of :class:`Metrics`."""
        data, content_type = metrics.render()
        return Response(data, media_type=content_type)

    return app


def run_server(spec: str | Path, config: ServeConfig | None = None, corpus: str | Path | None = None,
               access_log: bool = False) -> None:
    """Load the cascade in ``spec`` (with ``corpus``'s precomputed embeddings), warm it up with one
    request so the first client does not pay for lazy initialisation, and serve it until stopped."""
    import uvicorn

    from distill.cascade import Cascade

    config = config or ServeConfig()
    if config.threads is not None:
        import torch

        torch.set_num_threads(config.threads)
    cascade = Cascade.load(spec, corpus=corpus)
    cascade.rank("warm up", [{"id": "a", "text": "a document to warm up the stages", "score": 2.0},
                             {"id": "b", "text": "another one", "score": 1.0}])  # scores: some stages need them
    log.info("serving %s on http://%s:%d (workers %d, queue %d, default deadline %g ms)", cascade, config.host,
             config.port, config.workers, config.queue_size, config.deadline_ms)
    uvicorn.run(create_app(cascade, config), host=config.host, port=config.port, log_level="warning",
                access_log=access_log, limit_concurrency=config.max_connections, timeout_graceful_shutdown=5)

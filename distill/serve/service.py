"""The work behind ``distill serve``'s endpoints: admission control, the handoff to a worker, and
the answers and errors in the shape of each request's API (see :mod:`distill.serve.app` for the
rules, :mod:`distill.serve.compat` for the APIs).

Every rerank endpoint runs the same path (:meth:`Service.handle`): a full queue refuses before the
body is parsed; the body is parsed (in steps when big) by the endpoint's request model, or at
``/rerank`` by TEI's when it sends ``texts``; the deadline is the tighter of the body's
``deadline_ms`` and the ``X-Request-Timeout-Ms`` header, the server's default otherwise; the request
is admitted or shed by it, ranked in a worker, and answered by its model. FastAPI is imported only
where an answer is made.

Readiness: a server given warm-up requests (:class:`WarmUp`, :meth:`Service.warm_up`) sheds every rerank
request (reason ``starting``) and answers ``/healthz`` with 503 until each stage has run on them warm; it
logs each stage's expected and measured cost against the default deadline and warns of a stage that can
never run at it (:func:`~distill.serve.admission.never_fits`). Degraded answers are counted by the first
stage skipped and the runtime's reason (``distill_degraded_total``).

Batching and disconnects: with ``max_batch_wait_ms`` > 0 each request runs its cascade under the stage
batchers (:mod:`distill.serve.batcher`); a request whose client disconnects (the ASGI receive channel says
``http.disconnect``) is dropped unscored where it waits, in the queue or in a batcher, and counted
(``distill_disconnected_total``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from distill.core.errors import DistillError
from distill.serve.admission import Calibration, Dispatcher, Metrics, WarmRun, never_fits, steer_deadline
from distill.serve.batcher import Batching, Disconnected, Parked, pool_threads
from distill.serve.compat import COHERE_PATHS, cohere_model, tei_model
from distill.serve.request import DEADLINE_HEADER, Alternative, header_deadline, parse_request, request_model

if TYPE_CHECKING:
    from distill.serve.app import Rankable, ServeConfig

log = logging.getLogger(__name__)


@dataclass
class Call:
    """One request to a rerank endpoint: its arrival (the start of its deadline), the request model
    whose API shape answers it (the endpoint's, until the body says otherwise) and the deadline its
    :data:`~distill.serve.request.DEADLINE_HEADER` header sent; ``gone`` is set when its client disconnects."""

    arrival: float
    shape: type
    header_ms: float | None = None
    gone: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class WarmUp:
    """A request ranked before the server reports ready (:meth:`Service.warm_up`); ``label`` names its
    documents in the start-up log, ``new_documents`` whether they are sent as text outside any corpus."""

    label: str
    query: str
    documents: list[dict[str, Any]]
    new_documents: bool = True


def skip_reason(skipped: str | None) -> str:
    """The reason word of a stage report's ``skipped`` (``deadline: 3 ms spent ...`` -> ``deadline``)."""
    match = re.match(r"[A-Za-z_]+", skipped or "")
    return match.group(0).lower() if match else "unknown"


def freeze_start_up_objects() -> None:
    """Move every object alive now (the models, tokenizers, corpus: what serving keeps to the end) out of the
    garbage collector's reach (``gc.freeze``, as Instagram's and gunicorn's preloading servers do), so that a full
    collection traverses only what requests allocate. A full collection holds the GIL throughout: measured in a
    server of the bench's cascade with SciFact's corpus, ~536,000 objects took 255 ms a collection (a stall every
    request in flight pays, whatever its deadline); after the freeze, under 1 ms."""
    import gc

    gc.collect()
    gc.freeze()


def batches_any_stage(cascade: Rankable) -> bool:
    """Whether batching across requests has a stage to batch in ``cascade`` (one that does not say: assumed).
    Without one, batching on would only change how requests wait for workers (more threads, none of them
    scoring more at once), so the server runs as with batching off, and says so."""
    stages = getattr(cascade, "batchable_stages", None)
    if stages is None:
        return True
    names = stages()
    if names:
        log.info("batching across requests: stage(s) %s", ", ".join(map(repr, names)))
    else:
        log.info("batching across requests: no stage of the cascade scores pairs it could batch "
                 "(LightGBM, exported models scoring alone): each request is scored alone")
    return bool(names)


class Service:
    """The endpoints' work: admission, the handoff to a worker and the answers (module docstring)."""

    def __init__(self, cascade: Rankable, config: ServeConfig, clock: Callable[[], float]) -> None:
        from distill.cascade.runtime import ModelFault

        self.cascade, self.config, self.clock, self.fault = cascade, config, clock, ModelFault
        self.metrics = Metrics()
        batched = config.max_batch_wait_ms > 0 and batches_any_stage(cascade)
        self.dispatcher = Dispatcher(config.workers, config.queue_size, self.metrics,
                                     pool_threads(config.workers, batched))
        self.batching = Batching(config.max_batch_tokens, self.metrics, clock, config.cost_spreads) if batched else None
        self.calibration = Calibration(clock, spreads=config.cost_spreads)
        self.model = request_model(config)
        self.tei = Alternative(tei_model(config), has="texts", lacks="documents")
        self.cohere = {path: cohere_model(config, version) for path, version in COHERE_PATHS.items()}
        self.ready = threading.Event()  # set by warm_up, or at once by create_app when there is none
        self.failure: str | None = None  # why the warm-up failed

    def ms_since(self, arrival: float) -> float:
        return (self.clock() - arrival) * 1000.0

    def reject(self, reason: str) -> None:
        """Count a request refused before parsing (``distill_rejected_total``)."""
        self.metrics.rejected.labels(reason).inc()

    def answer(self, status: int, body: Any, outcome: str, call: Call, headers: dict[str, str] | None = None) -> Any:
        from fastapi.responses import JSONResponse

        self.metrics.requests.labels(outcome).inc()
        self.metrics.apis.labels(call.shape.api, outcome).inc()
        self.metrics.latency.labels(outcome).observe(self.ms_since(call.arrival) / 1000.0)
        return JSONResponse(body, status_code=status, headers=headers)

    def fail(self, status: int, message: str, outcome: str, call: Call, headers: dict[str, str] | None = None,
             **extra: Any) -> Any:
        """An error answer in the shape of the request's API."""
        return self.answer(status, call.shape.error_body(status, message, **extra), outcome, call, headers)

    def shed(self, reason: str, why: str, wait_ms: float, call: Call) -> Any:
        self.metrics.shed.labels(reason).inc()
        retry_s = max(1, math.ceil(wait_ms / 1000.0))
        return self.fail(503, f"overloaded ({reason}): {why}", "shed", call, {"Retry-After": str(retry_s)},
                         retry_after_s=retry_s)

    def deadline(self, sent: Any, call: Call) -> float:
        """The request's deadline: the tighter of the body's ``sent`` (where it is a usable number) and
        the header's, the server's default where neither is given."""
        config = self.config
        usable = isinstance(sent, (int, float)) and not isinstance(sent, bool) and 0 < sent <= config.max_deadline_ms
        given = ([float(sent)] if usable else []) + ([] if call.header_ms is None else [call.header_ms])
        return min(given, default=config.deadline_ms)

    def expired(self, sent: Any, call: Call) -> bool:
        """Whether even an answer without any stage would be late: the time since arrival plus the
        margin exceeds the deadline (:meth:`deadline` of the body's ``sent``)."""
        margin = self.dispatcher.margin_ms(self.config.margin_ms)
        return self.ms_since(call.arrival) + margin > self.deadline(sent, call)

    def costs(self, query: str, documents: list[dict[str, Any]]) -> list[float]:
        """Each stage's modelled cost for this request's pairs, by their length in characters."""
        pair_chars = [len(query) + len(d.get("title", "")) + len(d.get("text", "")) for d in documents]
        return [float(c) for c in self.cascade.estimate_ms(pair_chars)]

    async def handle(self, request: Any, shape: type, alternative: Alternative | None = None) -> Any:
        """A rerank endpoint's request (FastAPI's): in ``shape``'s API, or ``alternative``'s for a body it fits."""
        header_ms, header_error = header_deadline(request.headers.get(DEADLINE_HEADER), self.config)
        call = Call(request.state.arrival, shape, header_ms)
        raw = await request.body()
        watch = asyncio.ensure_future(self.watch(request.receive, call))
        try:
            return await self.rerank(raw, call, header_error, alternative)
        finally:
            watch.cancel()

    @staticmethod
    async def watch(receive: Callable[[], Any], call: Call) -> None:
        """Set ``call.gone`` when the ASGI receive channel (its body already read) says the client left."""
        if (await receive()).get("type") == "http.disconnect":
            call.gone.set()

    def scheduled(self, call: Call, budget_ms: float) -> AbstractContextManager[Parked]:
        """The stage batchers for ``call``'s cascade run (none when batching is off), its answer due
        ``budget_ms`` after its arrival."""
        if self.batching is None:
            return nullcontext(Parked())
        return self.batching.request(call.gone.is_set, call.arrival + budget_ms / 1000.0)

    async def rerank(self, raw: bytes, call: Call, header_error: str | None = None,
                     alternative: Alternative | None = None) -> Any:
        """Admit (a full queue refuses before the body is parsed), parse, admit by the deadline,
        run in a worker and answer (see the module docstring)."""
        dispatcher = self.dispatcher
        if not self.ready.is_set():
            why = "warming up the models" if self.failure is None else f"the warm-up failed ({self.failure})"
            return self.shed("starting", why, 1000.0, call)
        if dispatcher.full():
            return self.shed("queue_full", f"{self.config.queue_size} requests are waiting",
                             dispatcher.wait_ms(0.0), call)
        call.shape, body, invalid = await parse_request(call.shape, raw, lambda sent: self.expired(sent, call),
                                                        alternative)
        if invalid is not None:
            return self.fail(422, invalid["error"], "invalid", call, detail=invalid["detail"])
        if header_error is not None:
            return self.fail(422, header_error, "invalid", call,
                             detail=[{"type": "value_error", "loc": ["header", DEADLINE_HEADER], "msg": header_error}])
        if body is None:
            return self.shed("deadline", "the body took longer to arrive and decode than the deadline allows",
                             dispatcher.wait_ms(0.0), call)
        deadline = self.deadline(body.deadline_ms, call)
        documents = body.cascade_documents()
        costs = self.costs(body.query, documents)
        margin = dispatcher.margin_ms(self.config.margin_ms)
        cheapest = costs[0] + margin
        wait = dispatcher.wait_ms(sum(costs))
        if dispatcher.full():
            return self.shed("queue_full", f"{self.config.queue_size} requests are waiting", wait, call)
        if self.ms_since(call.arrival) + wait + cheapest > deadline:
            return self.shed("deadline", f"expected wait {wait:.1f} ms + cheapest answer {cheapest:.1f} ms "
                             f"exceeds the deadline of {deadline:g} ms", wait, call)

        def work() -> Any:
            if call.gone.is_set():
                raise Disconnected("queue")
            begin = self.clock()
            elapsed = (begin - call.arrival) * 1000.0
            if elapsed + cheapest > deadline:
                return None
            steered, _ = steer_deadline(elapsed, deadline - margin, costs, self.calibration.get(len(costs)))
            with self.scheduled(call, deadline - margin) as parked:
                result = self.cascade.rank(body.query, documents, deadline_ms=steered, top_k=body.top_k,
                                           started=call.arrival, min_score=body.min_score)
            finished = self.clock()
            dispatcher.measured(service_ms=max(0.0, (finished - begin) * 1000.0 - parked.ms))
            self.calibration.observe(costs, result.stages)
            return result, finished

        return await self.run(work, body, deadline, costs, call)

    async def run(self, work: Callable[[], Any], body: Any, deadline: float, costs: list[float], call: Call) -> Any:
        """``work`` in a worker, answered: 200, 503 (late), 422 (a document the cascade cannot
        read) or 500 (a model fault or a bug, logged; the server keeps serving)."""
        try:
            result = await self.dispatcher.submit(work)
        except DistillError as err:
            field_ = f"{err.field}: " if err.field else ""
            return self.fail(422, f"{field_}{err.message}", "invalid", call)
        except self.fault as err:
            log.error("model fault: %s", err)
            return self.fail(500, f"model fault: {err}", "error", call)
        except Disconnected as err:  # nobody reads the answer; counted
            self.metrics.disconnected.labels(err.where).inc()
            return self.fail(499, f"client closed the request: {err}", "disconnected", call)
        except Exception:  # a bug in a stage must not take the server down
            log.exception("ranking failed")
            return self.fail(500, "internal error while ranking (see the server log)", "error", call)
        if result is None:
            return self.shed("late", f"the queue took longer than expected; the first stage no longer fits "
                             f"the deadline of {deadline:g} ms", self.dispatcher.wait_ms(sum(costs)), call)
        result, finished = result
        self.dispatcher.measured(handoff_ms=(self.clock() - finished) * 1000.0)
        return self.respond(result, body, deadline, call)

    def respond(self, result: Any, body: Any, deadline: float, call: Call) -> Any:
        """200 with the ranking in ``body``'s API shape; the stages' times and skips counted."""
        stages = [{"name": s.name, "ran": bool(s.ran), "ms": float(s.ms), "n_in": int(s.n_in),
                   "n_out": int(s.n_out), "skipped": s.skipped} for s in result.stages]
        for s in stages:
            if s["ran"]:
                self.metrics.stage_latency.labels(s["name"]).observe(s["ms"] / 1000.0)
            else:
                self.metrics.skipped.labels(s["name"]).inc()
        first_skipped = next((s for s in result.stages if not s.ran), None)
        degraded = first_skipped is not None
        if degraded:
            self.metrics.degraded.labels(first_skipped.name, skip_reason(first_skipped.skipped)).inc()
        elapsed = self.ms_since(call.arrival)
        if elapsed > deadline:
            self.metrics.late.inc()
        report = {"stages": stages, "degraded": degraded, "deadline_ms": deadline, "elapsed_ms": round(elapsed, 3)}
        payload, headers = body.answer(result, report)
        return self.answer(200, payload, "degraded" if degraded else "ok", call, headers)

    def health(self) -> dict[str, Any]:
        """``/healthz``'s body: ``status`` is ok once warm, else starting (or failed, with the error)."""
        d, calibration = self.dispatcher, self.calibration
        status = "ok" if self.ready.is_set() else "starting" if self.failure is None else "failed"
        failure = {} if self.failure is None else {"error": self.failure}
        return {"status": status, **failure, "cascade": str(self.cascade), "workers": self.config.workers,
                "queue_depth": d.queued, "busy_workers": d.busy, "service_ms": d.service_ms,
                "handoff_ms": d.handoff_ms, "cost_factors": calibration.get(len(calibration.means)),
                "degraded": self.metrics.degraded_counts()}

    def warm_up(self, requests: Sequence[WarmUp]) -> None:
        """Rank each of ``requests`` cold (every stage loads and initialises), then warm, measured: the
        calibration starts from the warm times; log each stage's expected and measured cost against the
        default deadline, warn of a stage that can never run at it, and report ready. A cascade that fails
        here is never ready (``/healthz`` says why)."""
        try:
            runs = [self._warm(request) for request in requests]
        except Exception as err:  # noqa: BLE001 (any failure: logged, and the server says it is not ready)
            self.failure = f"{type(err).__name__}: {err}"
            log.exception("the warm-up failed: the server will not report ready")
            return
        self.log_costs(runs)
        freeze_start_up_objects()
        self.ready.set()
        log.info("warm: ready to serve")

    def _warm(self, request: WarmUp) -> WarmRun:
        self.cascade.rank(request.query, request.documents)
        costs = self.costs(request.query, request.documents)
        stages = self.cascade.rank(request.query, request.documents).stages
        self.calibration.observe(costs, stages)
        chars = sum(len(d.get("title", "")) + len(d.get("text", "")) for d in request.documents)
        return WarmRun(request.label, len(request.documents), round(chars / max(len(request.documents), 1)),
                       request.new_documents, [s.name for s in stages], costs, [float(s.ms) for s in stages])

    def log_costs(self, runs: Sequence[WarmRun]) -> None:
        """One line per stage with its expected and measured cost for each warm-up request, against the
        default deadline; a warning for each request kind where a stage can never run in time."""
        deadline, margin = self.config.deadline_ms, self.config.margin_ms
        for j, name in enumerate(runs[0].names if runs else []):
            costs = "; ".join(f"{r.n_docs} {r.label} of ~{r.chars} characters: {r.modelled_ms[j]:.1f} ms "
                              f"expected, {r.measured_ms[j]:.1f} ms measured" for r in runs)
            log.info("stage %s: %s (default deadline %g ms)", name, costs, deadline)
        for run in runs:
            warning = never_fits(run, deadline, margin)
            if warning is not None:
                log.warning(warning)

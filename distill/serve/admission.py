"""Admission control of ``distill serve``: its metrics, the calibrated stage costs, the deadline
handed to the cascade and the bounded worker pool (see :mod:`distill.serve.app`).

prometheus_client is imported only where the metrics are made.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
SERVICE_EWMA = 0.2  # weight of the newest measurement in the service-time average
BATCH_WAIT_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """The server's Prometheus metrics, in a registry of their own (not the process-global one)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("distill_requests", "Requests to the rerank endpoints by outcome "
                                "(ok, degraded, shed, invalid, error).", ["outcome"], registry=self.registry)
        self.apis = Counter("distill_api_requests", "Requests to the rerank endpoints by API (native, tei, "
                            "cohere-v1, cohere-v2) and outcome.", ["api", "outcome"], registry=self.registry)
        self.latency = Histogram("distill_request_seconds", "Time from arrival to answer of rerank requests, "
                                 "by outcome.", ["outcome"], buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.stage_latency = Histogram("distill_stage_seconds", "Time a cascade stage took for one request.",
                                       ["stage"], buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.skipped = Counter("distill_stage_skipped", "Stages skipped to meet a deadline.", ["stage"],
                               registry=self.registry)
        self.degraded = Counter("distill_degraded", "Degraded answers by the first stage skipped and why (the "
                                "runtime's reason, e.g. deadline).", ["stage", "reason"], registry=self.registry)
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
        self.rejected = Counter("distill_rejected", "Requests refused before parsing (unauthorized: no or a "
                                "wrong API key; too_large: body over the limit).", ["reason"], registry=self.registry)
        self.dropped = Counter("distill_dropped_connections", "Connections closed while a request was still "
                               "arriving (request_timeout: not complete in time; evicted: the oldest incomplete "
                               "one, to make room at the connection limit).", ["reason"], registry=self.registry)
        self.disconnected = Counter("distill_disconnected", "Requests dropped unscored because their client "
                                    "disconnected, by where they waited (queue, or the stage they waited to batch "
                                    "for).", ["where"], registry=self.registry)
        self.batch_pairs = Histogram("distill_batch_pairs", "Pairs per model call of a batched stage.", ["stage"],
                                     buckets=SIZE_BUCKETS, registry=self.registry)
        self.batch_requests = Histogram("distill_batch_requests", "Requests per model call of a batched stage.",
                                        ["stage"], buckets=SIZE_BUCKETS, registry=self.registry)
        self.batch_wait = Histogram("distill_batch_wait_seconds", "Time a request waited in a stage's batcher "
                                    "before its batch started.", ["stage"], buckets=BATCH_WAIT_BUCKETS_S,
                                    registry=self.registry)

    def degraded_counts(self) -> dict[str, dict[str, int]]:
        """``distill_degraded_total`` as ``{stage: {reason: answers}}`` (for ``/healthz``)."""
        counts: dict[str, dict[str, int]] = {}
        for metric in self.degraded.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    counts.setdefault(sample.labels["stage"], {})[sample.labels["reason"]] = int(sample.value)
        return counts

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


COST_SPREADS = 2.0  # deviations above its mean measured cost a stage is planned at (ServeConfig.cost_spreads)


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

    def __init__(self, clock: Callable[[], float] = time.perf_counter, spreads: float = COST_SPREADS,
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
        self.fold([(stage.ms, model) if stage.ran else None for model, stage in zip(modelled_ms, stages)],
                  len(stages))

    def fold(self, measured: Sequence[tuple[float, float] | None], n_stages: int) -> None:
        """Fold in each stage's ``(measured ms, modelled ms)`` (None, or modelled 0: not measured)."""
        now = self.clock()
        with self._lock:
            grow = n_stages - len(self.means)
            self.means += [1.0] * grow
            self.deviations += [0.0] * grow
            self.best += [None] * grow
            self.measured_at += [now] * grow
            current = self._faded(now)
            for i, pair in enumerate(measured):
                if pair is not None and pair[1] > 0:
                    ratio = min(max(pair[0] / pair[1], self.lowest), self.highest)
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


@dataclass(frozen=True)
class WarmRun:
    """A warm-up request ranked on warm models: its documents (``label``: new or corpus ones, ``n_docs``
    of ~``chars`` characters) and each stage's modelled (the spec's) and measured milliseconds."""

    label: str
    n_docs: int
    chars: int
    new_documents: bool
    names: Sequence[str]
    modelled_ms: Sequence[float]
    measured_ms: Sequence[float]


def never_fits(run: WarmRun, deadline_ms: float, margin_ms: float) -> str | None:
    """Why the first stage that cannot fit ``deadline_ms`` (less ``margin_ms``) for requests like ``run``
    never runs for them, and the fixes; None when every stage fits. A stage is costed at the larger of its
    modelled and measured time: a stage slower than its spec says (a bi-encoder that must embed documents it
    has no stored embedding for) is skipped by the calibrated plan all the same."""
    budget, end = deadline_ms - margin_ms, 0.0
    for j, (name, modelled, measured) in enumerate(zip(run.names, run.modelled_ms, run.measured_ms)):
        end += max(modelled, measured)
        if end <= budget:
            continue
        effect = ("requests like these are shed: the first stage is the cheapest answer" if j == 0 else
                  "it and the stages after it are always skipped: every answer is degraded")
        fixes = []
        if run.new_documents and measured > 2 * modelled + 1.0:
            fixes.append("--corpus, with requests sending its documents by id (what a stage embeds or indexes "
                         "for a corpus's documents is done in advance)")
        fixes.append(f"a longer deadline (--deadline-ms {math.ceil(end + margin_ms)}, or deadline_ms per request)")
        fitting = int(run.n_docs * budget / end)
        if fitting >= 1:
            fixes.append(f"fewer documents per request (about {fitting})")
        return (f"stage {name!r} cannot run within the default deadline of {deadline_ms:g} ms for {run.n_docs} "
                f"{run.label} of ~{run.chars} characters: the stages up to it take ~{end:.0f} ms ({modelled:.1f} ms "
                f"expected for it, {measured:.1f} ms measured); {effect}. Fix: {'; or '.join(fixes)}")
    return None


class Slot:
    """A running request's hold on one of the dispatcher's ``workers`` slots: given back while it waits for a
    batch (:mod:`distill.serve.batcher`), taken again before it computes another stage."""

    def __init__(self, slots: threading.Semaphore, count: Callable[[int], None] = lambda change: None) -> None:
        self.slots, self.held, self.count = slots, False, count

    def take(self, timeout_s: float | None = None) -> bool:
        """Hold a slot (waiting at most ``timeout_s``, None: as long as it takes); whether it is held."""
        if not self.held:
            if not self.slots.acquire(timeout=None if timeout_s is None else max(0.0, timeout_s)):
                return False
            self.held = True
            self.count(1)
        return True

    def give_back(self) -> None:
        if self.held:
            self.slots.release()
            self.held = False
            self.count(-1)


# the slot of the request running in this thread (set by Dispatcher.submit's worker)
CURRENT_SLOT: ContextVar[Slot | None] = ContextVar("current_slot", default=None)


class Dispatcher:
    """A bounded worker pool and queue, with the wait estimate that admission control uses.

    A request runs holding one of ``workers`` slots (a :class:`Slot`, :data:`CURRENT_SLOT` in its thread); it
    waits in the queue until it has one. ``threads`` (at least ``workers``) run requests: more than ``workers``
    when requests are batched, so that a request may give its slot back while it waits for a batch and another
    one run meanwhile."""

    def __init__(self, workers: int, queue_size: int, metrics: Metrics, threads: int | None = None) -> None:
        self.workers = workers
        self.queue_size = queue_size
        self.metrics = metrics
        self.slots = threading.Semaphore(workers)
        self.pool = ThreadPoolExecutor(max_workers=max(workers, threads or 0), thread_name_prefix="distill-serve")
        self._lock = threading.Lock()
        self.queued = 0
        self.busy = 0  # requests running, slot held or not
        self.holding = 0  # requests holding a slot: those a new request waits behind (not those parked in a batch)
        self.service_ms: float | None = None
        self.handoff_ms = 0.0

    def margin_ms(self, configured: float) -> float:
        """Time to keep for answering: ``configured`` plus the measured handoff from a worker to
        the event loop (which grows when the machine is busy)."""
        with self._lock:
            return configured + self.handoff_ms

    def wait_ms(self, fallback_service_ms: float) -> float:
        """Expected wait for a worker: the requests ahead beyond the free workers, each taking the
        measured service time (``fallback_service_ms`` until one was measured), shared by the workers.
        Requests waiting in a batch hold no worker (:mod:`distill.serve.batcher`) and are not ahead."""
        with self._lock:
            ahead = self.queued + self.holding
            service = fallback_service_ms if self.service_ms is None else self.service_ms
        return max(0, ahead - self.workers + 1) * service / self.workers

    def full(self) -> bool:
        with self._lock:
            return self.queued >= self.queue_size

    def submit(self, work: Callable[[], Any]) -> asyncio.Future[Any]:
        """Queue ``work`` for a worker (the caller checked :meth:`full`)."""
        with self._lock:
            self.queued += 1
            self.metrics.queue_depth.set(self.queued)

        def run() -> Any:
            slot = Slot(self.slots, self._holding)
            slot.take()
            token = CURRENT_SLOT.set(slot)
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
                slot.give_back()
                CURRENT_SLOT.reset(token)

        return asyncio.get_running_loop().run_in_executor(self.pool, run)

    def _holding(self, change: int) -> None:
        with self._lock:
            self.holding += change

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

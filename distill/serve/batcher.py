"""Dynamic batching across requests in ``distill serve``: one scheduler per model stage gathers the
(query, document) pairs of concurrent requests into one model call.

Why: on its own a request's model stage is a small call (ten pairs after LightGBM's cutoff), whose fixed
costs (the tokenizer call, Python, starting the threads of each matrix product, a last sub-batch half
full) weigh on every request; under load, requests reach the stage together and one call for all of them
costs less than one each.

How (:class:`StageBatcher`): a stage runs at most ``slots`` batches at once (its model slots; one in the server,
:class:`Batching`, as its scorer runs one call at a time, batched or not). A request that reaches a batched
stage gives its worker slot back (:class:`~distill.serve.admission.Slot`; it takes one again before it
computes a later stage): the worker slots bound the requests' other stages, the model slots the
stage's calls, so that other requests run their cheap stages while the model scores (a pipeline: with one
worker, LightGBM for the next requests beside the cross-encoder's batch; without it, a batch scored holding a
worker slot would leave no request free to reach the stage while the model is busy, and nothing to merge). So
with batching up to ``workers`` requests' other stages and one call of each batched stage run at once (set
``--threads`` for that). Then

- while the stage has a free model slot, the request starts a batch **at once**, in its own thread, with
  whatever is already queued that fits: it never waits for company (waiting for it let the next request's cheap
  stages run first, which then found the model busy with no slack left: a collapse at tight deadlines);
- while every model slot is busy, it queues; when a batch ends, a request queued starts the next batch with
  the queued ones: the requests that arrived during the busy time share one call;
- a queued request whose slack runs out before a batch takes it (the slack: how long the stage's start may
  wait with its deadline's plan still holding) leaves, and the stage is skipped for it (``(None, ms waited)``:
  degraded, reason deadline), as the runtime skips a stage that would not fit.

The batch takes the most urgent requests first (earliest end of slack), then each other one that fits the
token budget ``max_batch_tokens`` (estimated tokens, capped at the stage's ``max_length``:
:func:`pair_tokens`, the estimate the deadline's plan costs pairs by) and whose
pairs delay no member past its slack (the batch's cost beyond a member's own must fit the member's
slack); what does not fit waits for the next batch. Costs are the plan's (the spec's) times a factor learnt
from this stage's batches as the server's planner learns its stages' (:class:`~distill.serve.admission.
Calibration`: the mean ratio of measured to planned time plus ``spreads`` deviations,
:attr:`StageBatcher.cost_factor`): a spec's cost may be far off on the machine serving it (a cross-encoder
measured on other cores; a bi-encoder costed with stored embeddings that must embed posted texts), and a batch
costed by it would either never take a second request or hold its members past their deadlines; costed at the
mean, every batch slower than its average would answer its last-admitted members late. A batched stage's slack
is also bounded by the request's due time (:meth:`Batching.request`). A request whose client has disconnected
is dropped when a batch is formed (and before each stage): :class:`Disconnected`, never scored.
``max_batch_wait_ms`` above 0 turns batching on; no request is held for company, so beyond that switch its value
is not used; 0 turns it off (no scheduler: each request's stages score its documents alone, holding its worker
slot).

Stages whose model scores pairs of texts (a ranker with ``score`` and the default ``score_documents``:
cross-encoders, teachers) are batched as one call on every member's pairs; a ranker with its own
``score_requests`` (a bi-encoder, exported or not: every query and every document without a stored embedding
embedded in one call) is batched through it (:func:`request_scorer`). The others (LightGBM, an exported
cross-encoder with its own ``score_documents``) score each request alone, holding its slot.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from distill.serve.admission import COST_SPREADS, Calibration

if TYPE_CHECKING:
    from distill.cascade.runtime import DocumentScorer, RuntimeStage
    from distill.rankers.documents import Documents
    from distill.serve.admission import Metrics

# threads per worker when batching: requests that wait for a batch without a slot, while others run
BATCH_THREADS_PER_WORKER = 16
# batches a server's stage scores at once (see Batching): its scorer runs one call at a time
MODEL_SLOTS = 1


class Disconnected(Exception):
    """A request's client disconnected before its work was scored: dropped where it waited (``where``)."""

    def __init__(self, where: str) -> None:
        super().__init__(f"the client disconnected while the request waited ({where})")
        self.where = where


@dataclass(eq=False)
class _Waiting:
    """One request's pairs waiting in a stage's batcher (times are the batcher's clock, in seconds)."""

    query: str
    docs: Documents
    tokens: float
    cost_ms: float  # the plan's cost of these pairs alone
    arrived: float
    start_by: float  # arrived + slack: the latest start the plan allows
    cancelled: Callable[[], bool]
    scores: np.ndarray | None = None
    share_ms: float = 0.0  # its share of the batch's model time, by tokens
    taken: bool = False  # in a batch (being scored)
    late: bool = False  # left: no batch took it within its slack
    error: BaseException | None = None
    done: bool = False


RequestScorer = Callable[[list[tuple[str, "Documents"]]], list[np.ndarray]]


class StageBatcher:
    """The batching scheduler of one stage (see the module docstring): ``score_requests([(query, docs), ...])``
    scores several requests' documents in one model call (:func:`request_scorer`), at most ``slots`` calls at
    once; ``on_batch(pairs, requests, waits_s)`` observes each batch; ``clock`` is in seconds."""

    def __init__(self, name: str, score_requests: RequestScorer, max_tokens: int,
                 slots: int = 1, on_batch: Callable[[int, int, list[float]], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter, spreads: float = COST_SPREADS) -> None:
        self.name, self.score_requests, self.max_tokens, self.slots = name, score_requests, max_tokens, slots
        self.on_batch, self.clock = on_batch, clock
        self._cond = threading.Condition()
        self._pending: list[_Waiting] = []
        self._running = 0  # batches of this stage being scored
        self.costs = Calibration(clock, spreads=spreads)  # measured / planned time of its batches (docstring)

    @property
    def cost_factor(self) -> float:
        """What this stage's batches are costed at, as a multiple of the plan's cost (module docstring)."""
        return self.costs.get(1)[0]

    def score(self, query: str, docs: Documents, tokens: float, cost_ms: float, slack_ms: float,
              cancelled: Callable[[], bool] = lambda: False) -> tuple[np.ndarray | None, float]:
        """Scores of ``docs`` for ``query``, scored in a batch with other requests' pairs, and this request's
        share of the batch's model time (ms, by tokens); ``(None, ms waited)`` when no batch took it within
        ``slack_ms`` (the stage is to be skipped); raises what the batch's model call raised, or
        :class:`Disconnected`. The caller holds no worker slot: a batch is scored in the thread of a request
        in it, or of one queued (module docstring)."""
        now = self.clock()
        item = _Waiting(query, docs, tokens, cost_ms, now, now + max(0.0, slack_ms) / 1000.0, cancelled)
        with self._cond:
            self._pending.append(item)
            while not item.done:
                if item.taken:  # in a batch another thread scores
                    self._cond.wait()
                elif self._running < self.slots:  # a free model slot: a batch starts now
                    self._lead(now)
                elif now >= item.start_by:  # queued behind busy slots past its slack: waiting breaks the plan
                    self._pending.remove(item)
                    item.late = item.done = True
                else:
                    self._cond.wait(None if math.isinf(item.start_by) else item.start_by - now)
                now = self.clock()
        if item.error is not None:
            raise item.error
        return (None, (self.clock() - item.arrived) * 1000.0) if item.late else (item.scores, item.share_ms)

    def _lead(self, now: float) -> None:
        """Take a batch and score it in this thread, in a model slot and not holding the lock (called holding
        it); a request queued takes the next batch when it ends."""
        batch = self._take(now)
        self._running += 1
        self._cond.notify_all()  # those dropped or late answer now
        self._cond.release()
        took_ms = None
        try:
            took_ms = self._run(batch, now)
        finally:
            self._cond.acquire()
            self._running -= 1
            if took_ms is not None:  # a failed call teaches nothing (nor does a batch planned at 0 ms)
                self.costs.fold([(took_ms, sum(w.cost_ms for w in batch))], 1)
            self._cond.notify_all()

    def _take(self, now: float) -> list[_Waiting]:
        """The next batch, out of the queue: the most urgent first, then those that fit (module docstring);
        requests whose client disconnected are dropped, those whose slack ended before ``now`` leave."""
        live = []
        for waiting in self._pending:
            if waiting.cancelled():
                waiting.error, waiting.done = Disconnected(self.name), True
            elif waiting.start_by < now:
                waiting.late = waiting.done = True
            else:
                live.append(waiting)
        live.sort(key=lambda w: w.start_by)
        batch: list[_Waiting] = []
        tokens = cost = 0.0
        factor = self.cost_factor
        for waiting in live:
            if batch and (tokens + waiting.tokens > self.max_tokens
                          or not all(now + factor * (cost + waiting.cost_ms - m.cost_ms) / 1000.0 <= m.start_by
                                     for m in (*batch, waiting))):
                continue
            batch.append(waiting)
            waiting.taken = True
            tokens, cost = tokens + waiting.tokens, cost + waiting.cost_ms
        self._pending = [w for w in live if not w.taken]
        return batch

    def _run(self, batch: list[_Waiting], now: float) -> float | None:
        """One model call for ``batch``'s pairs; each member gets its scores, or the call's error. The call's
        milliseconds (None: no call, or it failed)."""
        from distill.cascade.runtime import ModelFault

        if not batch:
            return None
        pairs, took_ms = sum(len(w.docs) for w in batch), None
        try:
            start = self.clock()
            parts = self.score_requests([(w.query, w.docs) for w in batch])
            took_ms = (self.clock() - start) * 1000.0
            if len(parts) != len(batch) or any(p.shape != (len(w.docs),) for w, p in zip(batch, parts)):
                raise ModelFault(f"stage {self.name!r} returned {[p.shape for p in parts]} scores for "
                                 f"{[len(w.docs) for w in batch]} documents")
            tokens = sum(w.tokens for w in batch) or 1.0
            for waiting, part in zip(batch, parts):
                waiting.scores, waiting.share_ms = part, took_ms * waiting.tokens / tokens
        except Exception as err:  # noqa: BLE001 (every member answers the batch's failure)
            took_ms = None
            for waiting in batch:
                waiting.error = err
        finally:
            for waiting in batch:
                waiting.done = True
        if self.on_batch is not None:
            self.on_batch(pairs, len(batch), [now - w.arrived for w in batch])
        return took_ms


@dataclass
class Parked:
    """Milliseconds a request spent in batchers, waiting or scored: not its service time, since a batch runs
    in the stage's model slot and holds no worker (admission control's estimate counts the time requests keep
    the workers busy; the model stage's own cost is the deadline planner's)."""

    ms: float = 0.0


class Batching:
    """The stage batchers of a server and the scheduler each request runs its cascade under
    (:data:`~distill.cascade.runtime.STAGE_SCHEDULER`, set by :meth:`request`).

    Each batcher has :data:`MODEL_SLOTS` model slots: a batchable stage's scorer runs one call at a time
    (:class:`~distill.cascade.runtime.DocumentScorer`: a Hugging Face fast tokenizer refuses concurrent calls),
    batched or not, so a second batch would only wait for the first, holding its members out of the next one and
    counting the wait as model time (which the cost calibration then learns)."""

    def __init__(self, max_tokens: int, metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.perf_counter, spreads: float = COST_SPREADS) -> None:
        self.max_tokens, self.clock, self.metrics, self.spreads = max_tokens, clock, metrics, spreads
        self._batchers: dict[str, StageBatcher] = {}
        self._lock = threading.Lock()

    @contextmanager
    def request(self, cancelled: Callable[[], bool], ends_at: float = math.inf) -> Iterator[Parked]:
        """Run the cascade inside to have its model stages batched; ``cancelled()`` says the client left;
        ``ends_at`` (the clock's seconds) is when the request's answer is due. A batched stage's slack is also
        bounded by it, less the stage's cost as its batcher measures it: the plan's slack is counted in the spec's
        costs (:func:`~distill.serve.admission.steer_deadline`), which overstate what a stage before it took
        where the spec is pessimistic, and a batch that trusted it would end past the deadline."""
        from distill.cascade.runtime import STAGE_SCHEDULER
        from distill.serve.admission import CURRENT_SLOT

        parked = Parked()

        def schedule(stage: RuntimeStage, query: str, docs: Documents, pair_chars: np.ndarray,
                     slack_ms: float) -> tuple[np.ndarray, float | None]:
            if cancelled():
                raise Disconnected(stage.name)
            slot = CURRENT_SLOT.get()
            if not stage.scorer.batchable:
                start = self.clock()
                # back from a batch, a request waits for a worker only within its slack: past it the stage is
                # skipped (its deadline holds), as in a batcher
                if slot is not None and not slot.take(None if math.isinf(slack_ms) else slack_ms / 1000.0):
                    return None, (self.clock() - start) * 1000.0
                return stage.scorer(query, docs), None
            if slot is not None:
                slot.give_back()  # the stage's model slots bound its calls; others run their cheap stages
            start, batcher = self.clock(), self.batcher(stage)
            cost_ms = stage.expected_ms(stage.pairs(pair_chars))
            slack_ms = min(slack_ms, (ends_at - start) * 1000.0 - batcher.cost_factor * cost_ms)
            try:
                return batcher.score(query, docs, pair_tokens(pair_chars, stage.max_tokens), cost_ms, slack_ms,
                                     cancelled)
            finally:  # without a worker slot throughout
                parked.ms += max(0.0, (self.clock() - start) * 1000.0)

        token = STAGE_SCHEDULER.set(schedule)
        try:
            yield parked
        finally:
            STAGE_SCHEDULER.reset(token)

    def batcher(self, stage: RuntimeStage) -> StageBatcher:
        """The batcher of ``stage`` (made on its first request)."""
        with self._lock:
            if stage.name not in self._batchers:
                self._batchers[stage.name] = StageBatcher(
                    stage.name, request_scorer(stage.scorer), self.max_tokens, MODEL_SLOTS, self._observer(stage.name),
                    self.clock, self.spreads)
            return self._batchers[stage.name]

    def _observer(self, name: str) -> Callable[[int, int, list[float]], None] | None:
        metrics = self.metrics
        if metrics is None:
            return None

        def observe(pairs: int, requests: int, waits_s: list[float]) -> None:
            metrics.batch_pairs.labels(name).observe(pairs)
            metrics.batch_requests.labels(name).observe(requests)
            for wait in waits_s:
                metrics.batch_wait.labels(name).observe(max(0.0, wait))

        return observe


def request_scorer(scorer: DocumentScorer) -> RequestScorer:
    """How one model call scores a batch of requests: the ranker's own ``score_requests`` where it has one
    (thread-safe by contract), else every member's pairs in one ``score_pairs`` call, split back."""
    from distill.rankers.base import declares

    if declares(scorer.ranker, "score_requests"):
        return lambda requests: [np.asarray(s, dtype=np.float64) for s in scorer.ranker.score_requests(requests)]

    def by_pairs(requests: list[tuple[str, Documents]]) -> list[np.ndarray]:
        sizes = [len(docs) for _, docs in requests]
        queries = [query for query, docs in requests for _ in range(len(docs))]
        scores = scorer.score_pairs(queries, [text for _, docs in requests for text in docs.joined()])
        return np.split(scores, np.cumsum(sizes)[:-1]) if scores.shape == (sum(sizes),) else [scores]

    return by_pairs


def pair_tokens(pair_chars: np.ndarray, max_tokens: int | None) -> float:
    """Estimated tokens of pairs of these lengths (characters) for a model that truncates each to ``max_tokens``
    (None: reads them whole): the deadline plan's estimate (:func:`~distill.inference.lengths.estimate_tokens`)."""
    from distill.inference.lengths import estimate_tokens

    tokens = estimate_tokens(pair_chars)
    return float((tokens if max_tokens is None else np.minimum(tokens, max_tokens)).sum())


def pool_threads(workers: int, batching: bool) -> int:
    """The dispatcher's threads: ``workers`` without batching, more with it (:data:`BATCH_THREADS_PER_WORKER`)."""
    return workers * BATCH_THREADS_PER_WORKER if batching else workers

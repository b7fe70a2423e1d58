"""Dynamic batching across requests in ``distill serve``: one scheduler per model stage gathers the
(query, document) pairs of concurrent requests into one model call.

Why: on its own a request's model stage is a small call (ten pairs after LightGBM's cutoff), whose fixed
costs (the tokenizer call, Python, starting the threads of each matrix product, a last sub-batch half
full) weigh on every request; under load, requests reach the stage together and one call for all of them
costs less than one each.

How (:class:`StageBatcher`): a request that reaches a batched stage gives its worker slot back
(:class:`~distill.serve.admission.Slot`; it takes one again before it computes a later stage) and waits in the
stage's queue, so that other requests run their cheap stages meanwhile. A batch starts, in the thread of one of
the requests waiting, holding a slot while it computes (the models run at most ``workers`` calls at once, as
without batching), when the stage's model is free and

- the pairs waiting reach ``max_batch_tokens`` (estimated tokens, capped at the stage's ``max_length``:
  :meth:`~distill.cascade.runtime.RuntimeStage.tokens`, the estimate the deadline's plan costs pairs by), or
- every request in the server (queued or running) is waiting there: nobody else could join, or
- a request has waited its hold: ``min(max_batch_wait_ms, its slack)``, the slack being how long the
  stage's start may wait with its deadline's plan still holding. A request without slack is not held.

The batch takes the most urgent requests first (earliest hold), then each other one that fits the token
budget and whose pairs delay no member past its slack (the batch's modelled cost beyond a member's own
must fit the member's slack). A request whose client has disconnected is dropped when a batch is formed
(and before each stage): :class:`Disconnected`, never scored. ``max_batch_wait_ms`` 0 turns batching off
(no scheduler: each request's stages score its documents alone).

Only stages whose model scores pairs of texts (a ranker with ``score`` and the default ``score_documents``:
cross-encoders, teachers) are batched; the others (LightGBM, a bi-encoder with stored embeddings, an
exported cross-encoder with its own ``score_documents``) score each request alone, holding its slot.
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

if TYPE_CHECKING:
    from distill.cascade.runtime import RuntimeStage
    from distill.rankers.documents import Documents
    from distill.serve.admission import Metrics, Slot

# threads per worker when batching: requests that wait for a batch without a slot, while others run
BATCH_THREADS_PER_WORKER = 16


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
    hold_until: float  # arrived + min(max wait, slack): a batch starts by then (when the model is free)
    start_by: float  # arrived + slack: the latest start the plan allows
    cancelled: Callable[[], bool]
    scores: np.ndarray | None = None
    share_ms: float = 0.0  # its share of the batch's model time, by tokens
    taken: bool = False  # in a batch (being scored)
    late: bool = False  # left: the model stayed busy past its slack
    error: BaseException | None = None
    done: bool = False


class StageBatcher:
    """The batching scheduler of one stage (see the module docstring). ``score_pairs(queries, texts)`` scores
    pairs of any queries; ``active()`` counts the requests in the server; ``on_batch(pairs, requests, waits_s)``
    observes each batch; ``clock`` is in seconds."""

    def __init__(self, name: str, score_pairs: Callable[[list[str], list[str]], np.ndarray], max_tokens: int,
                 max_wait_ms: float, active: Callable[[], int],
                 on_batch: Callable[[int, int, list[float]], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.name, self.score_pairs, self.max_tokens = name, score_pairs, max_tokens
        self.max_wait_s, self.clock, self.active = max_wait_ms / 1000.0, clock, active
        self.on_batch = on_batch
        self._cond = threading.Condition()
        self._pending: list[_Waiting] = []
        self._busy = False  # a batch of this stage is being scored

    def score(self, query: str, docs: Documents, tokens: float, cost_ms: float, slack_ms: float,
              cancelled: Callable[[], bool] = lambda: False,
              slot: Slot | None = None) -> tuple[np.ndarray | None, float]:
        """Scores of ``docs`` for ``query``, scored in a batch with other requests' pairs, and this request's
        share of the batch's model time (ms, by tokens); ``(None, ms waited)`` when the model stayed busy past
        the slack (the stage is to be skipped); raises what the batch's model call raised, or
        :class:`Disconnected`. ``slot``: the caller's, given back; taken while this thread scores a batch."""
        now = self.clock()
        slack_s = slack_ms / 1000.0
        item = _Waiting(query, docs, tokens, cost_ms, now, now + max(0.0, min(self.max_wait_s, slack_s)),
                        now + slack_s, cancelled)
        with self._cond:
            self._pending.append(item)
            self._cond.notify_all()  # a waiting request may now see a full batch
            while not item.done:
                now = self.clock()
                if not self._busy and self._due(now):
                    self._lead(now, slot)
                elif self._busy and not item.taken and now >= item.start_by:  # waiting more breaks the plan
                    self._pending.remove(item)
                    item.late = item.done = True
                else:
                    self._cond.wait(self._timeout(now))
        if item.error is not None:
            raise item.error
        return (None, (self.clock() - item.arrived) * 1000.0) if item.late else (item.scores, item.share_ms)

    def _due(self, now: float) -> bool:
        pending = self._pending
        return bool(pending) and (sum(w.tokens for w in pending) >= self.max_tokens or len(pending) >= self.active()
                                  or min(w.hold_until for w in pending) <= now)

    def _timeout(self, now: float) -> float | None:
        """Until the next hold ends, or, while the model is busy, the next slack."""
        if not self._pending:
            return None
        until = min(w.start_by if self._busy else w.hold_until for w in self._pending)
        return None if math.isinf(until) else max(0.0, until - now)

    def _lead(self, now: float, slot: Slot | None) -> None:
        """Take a batch and score it in this thread, holding ``slot`` and not the lock (called holding it)."""
        batch = self._take(now)
        self._busy = True
        self._cond.release()
        try:
            if slot is not None:
                slot.take()
            self._run(batch, now)
        finally:
            if slot is not None:
                slot.give_back()
            self._cond.acquire()
            self._busy = False
            self._cond.notify_all()

    def _take(self, now: float) -> list[_Waiting]:
        """The next batch, out of the queue: the most urgent first, then those that fit (module docstring);
        requests whose client disconnected are dropped."""
        live = []
        for waiting in self._pending:
            if waiting.cancelled():
                waiting.error, waiting.done = Disconnected(self.name), True
            else:
                live.append(waiting)
        live.sort(key=lambda w: w.hold_until)
        batch: list[_Waiting] = []
        tokens = cost = 0.0
        for waiting in live:
            if batch and (tokens + waiting.tokens > self.max_tokens
                          or not all(now + (cost + waiting.cost_ms - m.cost_ms) / 1000.0 <= m.start_by
                                     for m in (*batch, waiting))):
                continue
            batch.append(waiting)
            waiting.taken = True
            tokens, cost = tokens + waiting.tokens, cost + waiting.cost_ms
        self._pending = [w for w in live if all(w is not b for b in batch)]
        return batch

    def _run(self, batch: list[_Waiting], now: float) -> None:
        """One model call for ``batch``'s pairs; each member gets its scores, or the call's error."""
        from distill.cascade.runtime import ModelFault

        if not batch:
            return
        sizes = [len(w.docs) for w in batch]
        queries = [w.query for w, n in zip(batch, sizes) for _ in range(n)]
        texts = [text for w in batch for text in w.docs.joined()]
        try:
            start = self.clock()
            scores = self.score_pairs(queries, texts)
            took_ms = (self.clock() - start) * 1000.0
            if scores.shape != (len(texts),):
                raise ModelFault(f"stage {self.name!r} returned {scores.shape} scores for {len(texts)} pairs")
            tokens = sum(w.tokens for w in batch) or 1.0
            for waiting, part in zip(batch, np.split(scores, np.cumsum(sizes)[:-1])):
                waiting.scores, waiting.share_ms = part, took_ms * waiting.tokens / tokens
        except Exception as err:  # noqa: BLE001 (every member answers the batch's failure)
            for waiting in batch:
                waiting.error = err
        finally:
            for waiting in batch:
                waiting.done = True
        if self.on_batch is not None:
            self.on_batch(len(texts), len(batch), [now - w.arrived for w in batch])


@dataclass
class Parked:
    """Milliseconds a request spent in batchers beyond its share of their batches' model time: not its
    service time (admission control's estimate counts the time requests keep the workers busy)."""

    ms: float = 0.0


class Batching:
    """The stage batchers of a server and the scheduler each request runs its cascade under
    (:data:`~distill.cascade.runtime.STAGE_SCHEDULER`, set by :meth:`request`)."""

    def __init__(self, max_tokens: int, max_wait_ms: float, active: Callable[[], int],
                 metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.max_tokens, self.max_wait_ms, self.clock, self.active = max_tokens, max_wait_ms, clock, active
        self.metrics = metrics
        self._batchers: dict[str, StageBatcher] = {}
        self._lock = threading.Lock()

    @contextmanager
    def request(self, cancelled: Callable[[], bool]) -> Iterator[Parked]:
        """Run the cascade inside to have its model stages batched; ``cancelled()`` says the client left."""
        from distill.cascade.runtime import STAGE_SCHEDULER
        from distill.serve.admission import CURRENT_SLOT

        parked = Parked()

        def schedule(stage: RuntimeStage, query: str, docs: Documents, pair_chars: np.ndarray,
                     slack_ms: float) -> tuple[np.ndarray, float | None]:
            if cancelled():
                raise Disconnected(stage.name)
            slot = CURRENT_SLOT.get()
            if not stage.scorer.batchable:
                if slot is not None:
                    slot.take()
                return stage.scorer(query, docs), None
            if slot is not None:
                slot.give_back()  # others run while this request waits
            start, share = self.clock(), 0.0
            try:
                scores, ms = self.batcher(stage).score(query, docs, pair_tokens(pair_chars, stage.max_tokens),
                                                       stage.expected_ms(stage.pairs(pair_chars)), slack_ms, cancelled,
                                                       slot)
                share = 0.0 if scores is None else ms
                return scores, ms
            finally:  # its share of the batch is its service; the rest it waited without a slot
                parked.ms += max(0.0, (self.clock() - start) * 1000.0 - share)

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
                    stage.name, stage.scorer.score_pairs, self.max_tokens, self.max_wait_ms, self.active,
                    self._observer(stage.name), self.clock)
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


def pair_tokens(pair_chars: np.ndarray, max_tokens: int | None) -> float:
    """Estimated tokens of pairs of these lengths (characters) for a model that truncates each to ``max_tokens``
    (None: reads them whole): the deadline plan's estimate (:func:`~distill.inference.lengths.estimate_tokens`)."""
    from distill.inference.lengths import estimate_tokens

    tokens = estimate_tokens(pair_chars)
    return float((tokens if max_tokens is None else np.minimum(tokens, max_tokens)).sum())


def pool_threads(workers: int, max_wait_ms: float) -> int:
    """The dispatcher's threads: ``workers`` without batching, more with it (:data:`BATCH_THREADS_PER_WORKER`)."""
    return workers if max_wait_ms <= 0 else workers * BATCH_THREADS_PER_WORKER

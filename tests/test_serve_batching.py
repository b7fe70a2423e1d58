"""Dynamic batching across requests in ``distill serve`` (distill.serve.batcher's StageBatcher) and dropping the
requests of disconnected clients; tests/test_serve_batching_server.py runs it in the server. No timed assertions:
batches are counted, and the only bound on a wait keeps a broken test from hanging."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

pytest.importorskip("fastapi")

from distill.cascade.model import stage  # noqa: E402
from distill.data.beir import Dataset  # noqa: E402
from distill.rankers.base import BaseRanker  # noqa: E402
from distill.rankers.documents import Documents  # noqa: E402
from distill.rankers.loading import RunRanker  # noqa: E402
from distill.serve.batcher import Disconnected, StageBatcher, request_scorer  # noqa: E402

HANG_GUARD_S = 30  # only keeps a broken test from hanging; no assertion is about time


class Pairs(BaseRanker):
    """Scores a pair by its document's length through ``score`` (pairs of texts): a batchable stage. Counts
    its model calls and the queries in each."""

    name = "pairs"
    max_length = 64

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def rerank(self, dataset: Dataset, run: pl.DataFrame) -> pl.DataFrame:
        raise AssertionError("scored through rerank")

    def score(self, queries, docs) -> np.ndarray:
        self.calls.append(list(queries))
        return np.asarray([float(len(d)) for d in docs])


def documents(*texts: str) -> Documents:
    return Documents([str(i) for i in range(len(texts))], [""] * len(texts), list(texts), None,
                     np.full(len(texts), -1, dtype=np.int64))


def in_thread(target, out: list) -> threading.Thread:
    def run() -> None:
        try:
            out.append(target())
        except Exception as err:  # noqa: BLE001 (the test inspects it)
            out.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


class Blocking(Pairs):
    """Pairs whose first model call waits for ``release``: the model stays busy while the test queues requests."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def score(self, queries, docs) -> np.ndarray:
        if not self.calls:
            self.calls.append([])  # the busy call is counted once it returns
            self.release.wait(HANG_GUARD_S)
            self.calls.pop()
        return super().score(queries, docs)


def batcher(ranker: Pairs, slots: int = 1, max_tokens: int = 10_000, batches: list | None = None,
            clock=None) -> StageBatcher:
    scorer = SimpleNamespace(ranker=ranker, score_pairs=lambda q, t: np.asarray(ranker.score(q, t), dtype=np.float64))
    on_batch = None if batches is None else (lambda pairs, requests, waits: batches.append((pairs, requests, waits)))
    return StageBatcher("ce", request_scorer(scorer), max_tokens, slots, on_batch=on_batch,
                        **({} if clock is None else {"clock": clock}))


def until(condition) -> None:
    """Wait for ``condition()`` (another thread's progress), at most the hang guard."""
    for _ in range(HANG_GUARD_S * 100):
        if condition():
            return
        threading.Event().wait(0.01)
    raise AssertionError("the condition never came true")


def busy(b: StageBatcher, ranker: Blocking, out: list) -> threading.Thread:
    """A request whose batch holds the model (until ``ranker.release``)."""
    thread = in_thread(lambda: b.score("busy", documents("z"), 1.0, 0.0, float("inf")), out)
    until(lambda: ranker.calls == [[]])
    return thread


def test_an_idle_model_starts_a_lone_request_at_once():
    """No waiting for company: with the clock stopped and no end to its slack, a hold would never end."""
    ranker, batches, out = Pairs(), [], []
    b = batcher(ranker, batches=batches, clock=lambda: 0.0)
    thread = in_thread(lambda: b.score("q", documents("aa"), 1.0, 5.0, float("inf")), out)
    thread.join(HANG_GUARD_S)
    assert not thread.is_alive() and ranker.calls == [["q"]] and list(out[0][0]) == [2.0]
    assert batches == [(1, 1, [0.0])]


def test_requests_arriving_during_a_busy_batch_share_the_next_model_call():
    ranker, batches, out = Blocking(), [], []
    b = batcher(ranker, batches=batches)
    first = busy(b, ranker, out)
    second = in_thread(lambda: b.score("q1", documents("aa", "bbbb"), 2.0, 0.0, float("inf")), out)
    third = in_thread(lambda: b.score("q2", documents("ccc"), 1.0, 0.0, float("inf")), out)
    until(lambda: len(b._pending) == 2)  # queued while the model is busy
    ranker.release.set()
    for thread in (first, second, third):
        thread.join(HANG_GUARD_S)
    assert len(ranker.calls) == 2 and ranker.calls[0] == ["busy"] and sorted(ranker.calls[1]) == ["q1", "q1", "q2"]
    assert [(pairs, requests) for pairs, requests, _ in batches] == [(1, 1), (3, 2)]
    assert sorted(list(scores) for scores, _ in out) == [[1.0], [2.0, 4.0], [3.0]]  # each its own pairs' scores


def test_two_batches_run_at_once_with_two_model_slots():
    """Each call waits for the other at a barrier: with one slot the second would queue and the barrier break."""
    barrier = threading.Barrier(2, timeout=HANG_GUARD_S)

    class Meeting(Pairs):
        def score(self, queries, docs):
            barrier.wait()
            return super().score(queries, docs)

    ranker, out = Meeting(), []
    b = batcher(ranker, slots=2)
    threads = [in_thread(lambda q=q: b.score(q, documents("aa"), 1.0, 0.0, float("inf")), out) for q in "ab"]
    for thread in threads:
        thread.join(HANG_GUARD_S)
    assert sorted(ranker.calls) == [["a"], ["b"]] and all(isinstance(o, tuple) for o in out)


def test_a_request_without_slack_is_not_held_and_runs_alone():
    ranker, out = Pairs(), []
    b = batcher(ranker)
    thread = in_thread(lambda: b.score("q", documents("aa"), 1.0, 5.0, 0.0), out)
    thread.join(HANG_GUARD_S)
    assert not thread.is_alive() and ranker.calls == [["q"]] and list(out[0][0]) == [2.0]


def waiting(b: StageBatcher, query: str, tokens: float, cost_ms: float, slack_ms: float, arrived: float = 0.0):
    from distill.serve.batcher import _Waiting

    w = _Waiting(query, documents("x"), tokens, cost_ms, arrived, arrived + slack_ms / 1000.0, lambda: False)
    b._pending.append(w)
    return w


def test_a_batch_keeps_the_token_budget_and_no_member_past_its_slack():
    b = batcher(Pairs(), max_tokens=250)
    first, second, third = (waiting(b, q, 100.0, 1.0, 1000.0) for q in "abc")
    assert b._take(0.0) == [first, second] and b._pending == [third]  # 300 tokens > 250
    b = batcher(Pairs())
    big = waiting(b, "b", 10.0, 20.0, 1000.0)  # would delay the urgent one by 20 ms
    urgent = waiting(b, "u", 10.0, 5.0, 10.0)  # may start 10 ms late at most: taken first
    small = waiting(b, "s", 10.0, 4.0, 1000.0)
    assert b._take(0.0) == [urgent, small] and b._pending == [big]


@pytest.mark.parametrize("ms_per_call, joins", [(1.0, True), (100.0, False)])
def test_batches_are_costed_by_what_this_stages_calls_measured(ms_per_call, joins):
    """The plan costs each request 10 ms; its model calls take 1 ms (a spec measured on slower cores) or 100 ms
    (a bi-encoder costed with stored embeddings, embedding posted texts). An urgent request that may start 5 ms
    late shares its batch only where the measured cost says the other's pairs delay it less."""
    now = [0.0]

    class Timed(Pairs):
        def score(self, queries, docs):
            now[0] += ms_per_call / 1000.0
            return super().score(queries, docs)

    b = batcher(Timed(), clock=lambda: now[0])
    assert b.cost_factor == 1.0  # nothing measured: the plan's cost
    for _ in range(40):  # idle: each scored at once, and measured
        b.score("a", documents("x"), 1.0, 10.0, float("inf"))
    assert b.cost_factor == pytest.approx(ms_per_call / 10.0, rel=0.05)
    other = waiting(b, "other", 1.0, 10.0, 1000.0, arrived=now[0])
    urgent = waiting(b, "urgent", 1.0, 10.0, 5.0, arrived=now[0])
    assert b._take(now[0]) == ([urgent, other] if joins else [urgent])


def test_a_stage_whose_calls_vary_is_costed_above_their_mean():
    """Calls alternating 1 and 3 ms for a 10 ms plan: costed at the mean alone, every slow batch would end its
    last-admitted member late; the factor is the mean plus two mean deviations, as the planner's."""
    now, calls = [0.0], []

    class Varying(Pairs):
        def score(self, queries, docs):
            calls.append(1)
            now[0] += (1.0 if len(calls) % 2 else 3.0) / 1000.0
            return super().score(queries, docs)

    b = batcher(Varying(), clock=lambda: now[0])
    for _ in range(60):
        b.score("a", documents("x"), 1.0, 10.0, float("inf"))
    assert 0.3 < b.cost_factor < 0.45  # mean 0.2, deviations ~0.1


def test_a_request_whose_slack_ended_before_its_batch_leaves_it():
    b = batcher(Pairs())
    late, fine = waiting(b, "late", 1.0, 0.0, 5.0), waiting(b, "fine", 1.0, 0.0, 50.0)
    assert b._take(0.01) == [fine] and late.late and late.done and b._pending == []


def test_a_disconnected_clients_request_in_a_batcher_is_never_scored():
    ranker, out = Pairs(), []
    b = batcher(ranker)
    gone = in_thread(lambda: b.score("gone", documents("aa"), 1.0, 0.0, float("inf"), cancelled=lambda: True), out)
    stays = in_thread(lambda: b.score("stays", documents("bbb"), 1.0, 0.0, float("inf")), out)
    for thread in (gone, stays):
        thread.join(HANG_GUARD_S)
    assert ranker.calls == [["stays"]]
    assert any(isinstance(o, Disconnected) and o.where == "ce" for o in out)


def test_a_failing_batch_fails_each_of_its_requests():
    class Failing(Blocking):
        def score(self, queries, docs):
            super().score(queries, docs)
            raise RuntimeError("model broke")

    ranker, out = Failing(), []
    b = batcher(ranker)
    first = busy(b, ranker, out)
    threads = [in_thread(lambda q=q: b.score(q, documents("aa"), 1.0, 0.0, float("inf")), out) for q in "ab"]
    until(lambda: len(b._pending) == 2)
    ranker.release.set()
    for thread in (first, *threads):
        thread.join(HANG_GUARD_S)
    assert len(ranker.calls) == 2 and sorted(ranker.calls[1]) == ["a", "b"]  # the second call: both requests
    assert len(out) == 3 and all(isinstance(o, RuntimeError) for o in out)


def test_a_request_is_not_held_for_a_busy_model_past_its_slack():
    ranker, out = Pairs(), []
    b = batcher(ranker)
    b._running = b.slots  # every model slot scores another batch
    thread = in_thread(lambda: b.score("q", documents("aa"), 1.0, 5.0, 0.0), out)
    thread.join(HANG_GUARD_S)
    assert not thread.is_alive() and out[0][0] is None and ranker.calls == [] and b._pending == []


def test_a_request_whose_own_batch_outlasts_its_slack_gets_its_scores():
    """A member of the batch being scored waits for it whatever its slack; a request left out of it leaves once
    its slack is over (the model stays busy)."""
    now = [0.0]
    out: dict = {}

    class Slow(Blocking):
        def score(self, queries, docs):
            if self.calls:  # the batch after the busy one runs past every slack
                now[0] = 1.0
            return super().score(queries, docs)

    ranker = Slow()
    b = batcher(ranker, clock=lambda: now[0])
    first = busy(b, ranker, [])
    threads = []  # "left out" would delay the member past its slack: not in its batch
    for name, cost, slack in (("member", 0.0, 10.0), ("left out", 50.0, 20.0), ("other", 0.0, float("inf"))):
        threads.append(in_thread(lambda n=name, c=cost, s=slack: out.setdefault(
            n, b.score(n, documents("aa"), 1.0, c, s)), []))
    until(lambda: len(b._pending) == 3)
    ranker.release.set()
    for thread in (first, *threads):
        thread.join(HANG_GUARD_S)
    assert ranker.calls == [["busy"], ["member", "other"]]
    assert out["member"][0] is not None and out["other"][0] is not None and out["left out"][0] is None


def test_a_stage_its_scheduler_cannot_start_in_time_is_skipped_for_the_deadline():
    from distill.cascade.runtime import STAGE_SCHEDULER

    ranker = Pairs()
    cascade = stage("bm25", RunRanker(), "bm25") >> stage("ce", ranker) >> stage("ce2", Pairs())
    token = STAGE_SCHEDULER.set(lambda stage, query, docs, pair_chars, slack_ms: (None, 7.0))
    try:
        result = cascade.rank("q", ["a", "bb"], deadline_ms=60_000)
    finally:
        STAGE_SCHEDULER.reset(token)
    ce, ce2 = result.stages[1:]
    assert not ce.ran and ce.skipped.startswith("deadline: waited 7.00 ms") and ranker.calls == []
    assert not ce2.ran and ce2.skipped == "after skipped stage 'ce'" and result.ids == ["0", "1"]


def test_the_batcher_counts_tokens_as_the_plan_costs_pairs():
    """One length estimate: the batch budget's tokens are those the plan's pair weights come from."""
    from distill.inference.lengths import REFERENCE_TOKENS, pair_weights
    from distill.serve.batcher import pair_tokens

    chars = np.asarray([10.0, 400.0, 4000.0])
    assert pair_tokens(chars, 64) == 3.0 + 64.0 + 64.0  # capped at the model's max_length
    assert pair_tokens(chars, None) == 3.0 + 100.0 + 1000.0
    weights = [max(pair_tokens(np.asarray([c]), 64) / REFERENCE_TOKENS, 1.0) for c in chars]
    assert pair_weights(chars, 64).tolist() == weights

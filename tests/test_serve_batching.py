"""Dynamic batching across requests in ``distill serve`` (distill.serve.batcher) and dropping the requests of
disconnected clients. No timed assertions: batches are counted, and the only bound on a wait keeps a broken
test from hanging."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import polars as pl
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from distill.cascade.model import StageCost, stage  # noqa: E402
from distill.core.errors import ConfigError  # noqa: E402
from distill.data.beir import Dataset  # noqa: E402
from distill.rankers.base import BaseRanker  # noqa: E402
from distill.rankers.documents import Documents  # noqa: E402
from distill.rankers.loading import RunRanker  # noqa: E402
from distill.serve import ServeConfig, create_app  # noqa: E402
from distill.serve.batcher import Disconnected, StageBatcher  # noqa: E402
from distill.serve.service import Call  # noqa: E402

HANG_GUARD_S = 30  # only keeps a broken test from hanging; no assertion is about time
DOCS = [{"id": "a", "text": "the river bank"}, {"id": "b", "text": "a river"}, {"id": "c", "text": "stone"}]


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


class Gate(BaseRanker):
    """A stage with its own ``score_documents`` (not batched) that lets requests on once ``parties`` are in it:
    every request is then running when the batched stage after it is reached."""

    name = "gate"

    def __init__(self, parties: int) -> None:
        self.barrier = threading.Barrier(parties, timeout=HANG_GUARD_S)

    def rerank(self, dataset: Dataset, run: pl.DataFrame) -> pl.DataFrame:
        raise AssertionError("scored through rerank")

    def score_documents(self, query: str, docs: Documents) -> np.ndarray:
        self.barrier.wait()
        return np.zeros(len(docs))


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


def batcher(ranker: Pairs, active: int, max_wait_ms: float = 600_000.0, max_tokens: int = 10_000,
            batches: list | None = None) -> StageBatcher:
    def score_pairs(queries, texts):
        return np.asarray(ranker.score(queries, texts), dtype=np.float64)

    on_batch = None if batches is None else (lambda pairs, requests, waits: batches.append((pairs, requests)))
    return StageBatcher("ce", score_pairs, max_tokens, max_wait_ms, active=lambda: active, on_batch=on_batch)


def test_two_concurrent_requests_share_one_model_call():
    ranker, batches, out = Pairs(), [], []
    b = batcher(ranker, active=2, batches=batches)
    first = in_thread(lambda: b.score("q1", documents("aa", "bbbb"), 2.0, 0.0, float("inf")), out)
    second = in_thread(lambda: b.score("q2", documents("ccc"), 1.0, 0.0, float("inf")), out)
    for thread in (first, second):
        thread.join(HANG_GUARD_S)
    assert len(ranker.calls) == 1 and sorted(ranker.calls[0]) == ["q1", "q1", "q2"]
    assert batches == [(3, 2)]
    assert sorted(list(scores) for scores, _ in out) == [[2.0, 4.0], [3.0]]  # each its own pairs' scores


def test_a_request_without_slack_is_not_held_and_runs_alone():
    ranker, out = Pairs(), []
    b = batcher(ranker, active=2)  # another request is in the server: a request with slack would wait for it
    thread = in_thread(lambda: b.score("q", documents("aa"), 1.0, 5.0, 0.0), out)
    thread.join(HANG_GUARD_S)  # held, it would wait the 600 s hold
    assert not thread.is_alive() and ranker.calls == [["q"]] and list(out[0][0]) == [2.0]


def waiting(b: StageBatcher, query: str, tokens: float, cost_ms: float, slack_ms: float, arrived: float = 0.0):
    from distill.serve.batcher import _Waiting

    hold = arrived + min(b.max_wait_s, slack_ms / 1000.0)
    w = _Waiting(query, documents("x"), tokens, cost_ms, arrived, hold, arrived + slack_ms / 1000.0, lambda: False)
    b._pending.append(w)
    return w


def test_a_batch_keeps_the_token_budget_and_no_member_past_its_slack():
    b = batcher(Pairs(), active=9, max_tokens=250)
    first, second, third = (waiting(b, q, 100.0, 1.0, 1000.0) for q in "abc")
    assert b._take(0.0) == [first, second] and b._pending == [third]  # 300 tokens > 250
    b = batcher(Pairs(), active=9)
    urgent = waiting(b, "u", 10.0, 5.0, 10.0)  # may start 10 ms late at most
    big = waiting(b, "b", 10.0, 20.0, 1000.0)  # would delay it by 20 ms
    small = waiting(b, "s", 10.0, 4.0, 1000.0)
    assert b._take(0.0) == [urgent, small] and b._pending == [big]


def test_a_disconnected_clients_request_in_a_batcher_is_never_scored():
    ranker, out = Pairs(), []
    b = batcher(ranker, active=2)
    gone = in_thread(lambda: b.score("gone", documents("aa"), 1.0, 0.0, float("inf"), cancelled=lambda: True), out)
    stays = in_thread(lambda: b.score("stays", documents("bbb"), 1.0, 0.0, float("inf")), out)
    for thread in (gone, stays):
        thread.join(HANG_GUARD_S)
    assert ranker.calls == [["stays"]]
    assert any(isinstance(o, Disconnected) and o.where == "ce" for o in out)


def test_a_failing_batch_fails_each_of_its_requests():
    class Failing(Pairs):
        def score(self, queries, docs):
            raise RuntimeError("model broke")

    out = []
    b = batcher(Failing(), active=2)
    threads = [in_thread(lambda q=q: b.score(q, documents("aa"), 1.0, 0.0, float("inf")), out) for q in "ab"]
    for thread in threads:
        thread.join(HANG_GUARD_S)
    assert len(out) == 2 and all(isinstance(o, RuntimeError) for o in out)


def test_a_request_is_not_held_for_a_busy_model_past_its_slack():
    ranker, out = Pairs(), []
    b = batcher(ranker, active=1)
    b._busy = True  # another batch is being scored
    thread = in_thread(lambda: b.score("q", documents("aa"), 1.0, 5.0, 0.0), out)
    thread.join(HANG_GUARD_S)
    assert not thread.is_alive() and out[0][0] is None and ranker.calls == [] and b._pending == []


def test_a_request_whose_own_batch_outlasts_its_slack_gets_its_scores():
    """A member of the batch being scored waits for it whatever its slack; a request left out of it leaves once
    its slack is over (the model stays busy)."""
    now = [0.0]
    out: dict = {}

    class Slow(Pairs):
        def score(self, queries, docs):
            now[0] = 1.0  # the batch runs past both slacks...
            threading.Event().wait(0.1)  # ...while the others may wake and look (not a timing assertion)
            return super().score(queries, docs)

    ranker = Slow()
    b = StageBatcher("ce", lambda q, t: np.asarray(ranker.score(q, t), dtype=np.float64), 10_000, 600_000.0,
                     active=lambda: 3, clock=lambda: now[0])
    threads = []  # "left out" would delay the member past its slack: not in its batch
    for name, cost, slack in (("member", 0.0, 10.0), ("left out", 50.0, 20.0), ("leader", 0.0, float("inf"))):
        threads.append(in_thread(lambda n=name, c=cost, s=slack: out.setdefault(
            n, b.score(n, documents("aa"), 1.0, c, s)), []))
        for _ in range(HANG_GUARD_S * 100):  # in this order: the last one leads
            if len(b._pending) == len(threads) or name == "leader":
                break
            threading.Event().wait(0.01)
    for thread in threads:
        thread.join(HANG_GUARD_S)
    assert ranker.calls == [["member", "leader"]]
    assert out["member"][0] is not None and out["leader"][0] is not None and out["left out"][0] is None


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


def served(parties: int, **config):
    """An app over ``bm25 >> gate >> ce`` (ce batchable) with ``workers=parties``, and its ce ranker."""
    ranker = Pairs()
    cascade = stage("bm25", RunRanker(), "bm25") >> stage("gate", Gate(parties)) >> stage("ce", ranker)
    cascade.costs = {"bm25": StageCost(), "gate": StageCost(), "ce": StageCost(0.0, 0.001)}
    return create_app(cascade, ServeConfig(workers=parties, **config)), ranker


def post_together(app, n: int) -> list:
    answers: list = []
    with TestClient(app) as c:
        threads = [in_thread(lambda i=i: c.post("/rerank", json={"query": f"river {i}", "documents": DOCS,
                                                                  "deadline_ms": 60_000}), answers)
                   for i in range(n)]
        for thread in threads:
            thread.join(HANG_GUARD_S)
        metrics = c.get("/metrics").text
    assert [a.status_code for a in answers] == [200] * n
    assert all(not a.json()["degraded"] for a in answers)
    return metrics


def test_concurrent_requests_are_scored_in_one_model_call_with_batching_on():
    app, ranker = served(2, max_batch_wait_ms=60_000)
    metrics = post_together(app, 2)
    assert len(ranker.calls) == 1 and sorted(set(ranker.calls[0])) == ["river 0", "river 1"]
    assert 'distill_batch_requests_count{stage="ce"} 1.0' in metrics
    assert 'distill_batch_requests_sum{stage="ce"} 2.0' in metrics
    assert 'distill_batch_pairs_sum{stage="ce"} 6.0' in metrics
    assert 'distill_batch_wait_seconds_count{stage="ce"} 2.0' in metrics
    assert ServeConfig().max_batch_wait_ms == 0  # off by default (docs/serving.md, "Batching across requests")


def test_wait_zero_scores_each_request_alone():
    app, ranker = served(2, max_batch_wait_ms=0)
    metrics = post_together(app, 2)
    assert sorted(ranker.calls) == [["river 0"] * 3, ["river 1"] * 3]
    assert app.state.service.batching is None and 'distill_batch_requests_count{stage="ce"}' not in metrics


def test_a_disconnected_clients_queued_request_is_never_scored():
    app, ranker = served(1)
    service = app.state.service
    call = Call(arrival=service.clock(), shape=service.model)

    async def disconnect() -> dict:
        return {"type": "http.disconnect"}

    async def rerank():
        await service.watch(disconnect, call)  # what the receive channel says when the client leaves
        return await service.rerank(b'{"query": "river", "documents": ["a river"]}', call)

    answer = asyncio.run(rerank())
    assert call.gone.is_set() and answer.status_code == 499 and ranker.calls == []
    metrics = service.metrics.render()[0].decode()
    assert 'distill_disconnected_total{where="queue"} 1.0' in metrics
    assert 'distill_requests_total{outcome="disconnected"} 1.0' in metrics


def test_batching_options_are_checked():
    with pytest.raises(ConfigError, match="max_batch_wait_ms"):
        ServeConfig(max_batch_wait_ms=-1)
    with pytest.raises(ConfigError, match="max_batch_tokens"):
        ServeConfig(max_batch_tokens=0)

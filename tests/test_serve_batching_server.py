"""Batching across requests as ``distill serve`` runs it: requests sharing the model's next call through the app,
dropping a disconnected client's queued request, a bi-encoder stage batching its texts, and the worker slot a
request gives back while it waits for a batch. No timed assertions, as in tests/test_serve_batching.py."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from test_serve_batching import HANG_GUARD_S, Blocking, Pairs, documents, in_thread, until  # noqa: E402

from distill.cascade.model import StageCost, stage  # noqa: E402
from distill.core.errors import ConfigError  # noqa: E402
from distill.data.beir import Dataset  # noqa: E402
from distill.rankers.base import BaseRanker  # noqa: E402
from distill.rankers.documents import Documents  # noqa: E402
from distill.rankers.loading import RunRanker  # noqa: E402
from distill.serve import ServeConfig, create_app  # noqa: E402
from distill.serve.batcher import StageBatcher, request_scorer  # noqa: E402
from distill.serve.service import Call  # noqa: E402

DOCS = [{"id": "a", "text": "the river bank"}, {"id": "b", "text": "a river"}, {"id": "c", "text": "stone"}]


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


def served(parties: int, ranker: Pairs | None = None, **config):
    """An app over ``bm25 >> gate >> ce`` (ce batchable) with ``workers=parties``, and its ce ranker."""
    ranker = Pairs() if ranker is None else ranker
    cascade = stage("bm25", RunRanker(), "bm25") >> stage("gate", Gate(parties)) >> stage("ce", ranker)
    cascade.costs = {"bm25": StageCost(), "gate": StageCost(), "ce": StageCost(0.0, 0.001)}
    return create_app(cascade, ServeConfig(workers=parties, **config)), ranker


def post_together(app, n: int, while_running=None) -> list:
    answers: list = []
    with TestClient(app) as c:
        threads = [in_thread(lambda i=i: c.post("/rerank", json={"query": f"river {i}", "documents": DOCS,
                                                                  "deadline_ms": 60_000}), answers)
                   for i in range(n)]
        if while_running is not None:
            while_running()
        for thread in threads:
            thread.join(HANG_GUARD_S)
        metrics = c.get("/metrics").text
    assert [a.status_code for a in answers] == [200] * n
    assert all(not a.json()["degraded"] for a in answers)
    return metrics


def test_requests_run_their_cheap_stages_while_the_model_scores_and_share_its_next_call():
    """One worker: while the first request's batch holds the model, the others run their gate (the worker slot
    is free) and queue; they share the next call."""
    app, ranker = served(1, Blocking(), max_batch_wait_ms=5)

    def queue_two() -> None:
        until(lambda: ranker.calls == [[]])
        batchers = app.state.service.batching._batchers
        until(lambda: len(batchers["ce"]._pending) == 2)
        ranker.release.set()

    metrics = post_together(app, 3, queue_two)
    assert len(ranker.calls) == 2 and [len(set(call)) for call in ranker.calls] == [1, 2]
    assert 'distill_batch_requests_count{stage="ce"} 2.0' in metrics
    assert 'distill_batch_requests_sum{stage="ce"} 3.0' in metrics
    assert 'distill_batch_pairs_sum{stage="ce"} 9.0' in metrics
    assert 'distill_batch_wait_seconds_count{stage="ce"} 3.0' in metrics
    assert ServeConfig().max_batch_wait_ms == 0  # off by default (docs/serving.md, "Batching across requests")


def test_wait_zero_scores_each_request_alone():
    app, ranker = served(2, max_batch_wait_ms=0)
    metrics = post_together(app, 2)
    assert sorted(ranker.calls) == [["river 0"] * 3, ["river 1"] * 3]
    assert app.state.service.batching is None and 'distill_batch_requests_count{stage="ce"}' not in metrics


def test_a_cascade_without_a_batchable_stage_runs_as_with_batching_off(caplog):
    """The gate scores documents itself (as LightGBM does): with nothing to batch, batching on changes nothing,
    neither the scheduler nor the dispatcher's threads, and the log says why."""
    cascade = stage("bm25", RunRanker(), "bm25") >> stage("gate", Gate(1))
    assert cascade.batchable_stages() == [] and (cascade >> stage("ce", Pairs())).batchable_stages() == ["ce"]
    with caplog.at_level("INFO", logger="distill.serve.service"):
        app = create_app(cascade, ServeConfig(workers=2, max_batch_wait_ms=5))
    service = app.state.service
    assert service.batching is None and service.dispatcher.pool._max_workers == 2
    assert "no stage of the cascade scores pairs it could batch" in caplog.text
    batched, _ = served(2, max_batch_wait_ms=5)
    assert batched.state.service.batching is not None and batched.state.service.dispatcher.pool._max_workers > 2


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


def test_a_bi_encoder_stage_batches_requests_by_embedding_their_texts_together(tiny_bi_encoder, monkeypatch):
    """A bi-encoder (its own score_requests) batches too: the queries of a batch in one encode call and the
    documents without a stored embedding in one more, with each request's scores as it alone would get."""
    from distill.cascade.runtime import DocumentScorer
    from students.bi_encoder import BiEncoderRanker

    ranker = BiEncoderRanker(tiny_bi_encoder, precompute=False)
    requests = [("river bank", documents("the river bank", "a river", "stone")), ("stone wall", documents("a wall"))]
    alone = [ranker.score_documents(query, docs) for query, docs in requests]
    encoded: list[int] = []
    encode = ranker._encode

    def counted(texts, *args, **kwargs):
        encoded.append(len(texts))
        return encode(texts, *args, **kwargs)

    monkeypatch.setattr(ranker, "_encode", counted)
    batches: list = []
    b = StageBatcher("bi", request_scorer(DocumentScorer(ranker)), 10_000, on_batch=lambda *args: batches.append(args))
    assert DocumentScorer(ranker).batchable
    ranker_scores = b.score_requests(requests)
    assert encoded == [2, 4]  # two queries, then four documents: one call each for the whole batch
    for got, expected in zip(ranker_scores, alone, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    out: list = []
    in_thread(lambda: b.score("river bank", requests[0][1], 3.0, 0.0, float("inf")), out).join(HANG_GUARD_S)
    np.testing.assert_allclose(out[0][0], alone[0], rtol=1e-5, atol=1e-6)
    assert [(pairs, n) for pairs, n, _ in batches] == [(3, 1)]


def test_a_request_waiting_in_a_batch_is_not_ahead_of_new_requests():
    """Admission's wait estimate counts the requests holding a worker: one that gave its slot back to wait for
    a batch (scored in the model's slot) does not delay a new request's cheap stages."""
    from distill.serve.admission import Dispatcher, Metrics, Slot

    dispatcher = Dispatcher(1, 8, Metrics())
    slot = Slot(dispatcher.slots, dispatcher._holding)
    assert dispatcher.wait_ms(100.0) == 0.0
    slot.take()
    assert dispatcher.wait_ms(100.0) == 100.0  # one ahead of a new request, on the one worker
    slot.give_back()
    assert dispatcher.wait_ms(100.0) == 0.0


def test_back_from_a_batch_a_request_waits_for_a_worker_only_within_its_slack():
    """After a batched stage a request takes a worker slot again for its next stage; with every slot busy past
    its slack the stage is skipped (None: the runtime degrades it), so its deadline holds."""
    from distill.cascade.runtime import STAGE_SCHEDULER
    from distill.serve.admission import CURRENT_SLOT, Slot
    from distill.serve.batcher import Batching

    slots = threading.Semaphore(1)
    busy_worker, mine = Slot(slots), Slot(slots)
    assert busy_worker.take()  # another request holds the only worker
    scored: list = []

    class Alone:  # a stage scored request by request (LightGBM), holding a worker
        batchable = False

        def __call__(self, query, docs):
            scored.append(query)
            return np.zeros(len(docs))

    stage = SimpleNamespace(name="lightgbm", scorer=Alone())
    token = CURRENT_SLOT.set(mine)
    try:
        with Batching(10_000).request(lambda: False):
            schedule = STAGE_SCHEDULER.get()
            scores, waited = schedule(stage, "q", documents("a"), np.array([10.0]), 0.0)
            assert scores is None and waited >= 0 and scored == [] and not mine.held
            busy_worker.give_back()
            scores, _ = schedule(stage, "q", documents("a"), np.array([10.0]), 0.0)
            assert list(scores) == [0.0] and scored == ["q"] and mine.held
    finally:
        CURRENT_SLOT.reset(token)
        mine.give_back()


def test_a_batched_stage_is_not_waited_for_past_the_requests_due_time():
    """The plan's slack is counted in the spec's costs and may overstate the time left (a pessimistic spec for
    an earlier stage): here it is unbounded, but the answer is due in 10 ms and the stage costs 20 ms, so with the
    model busy the request does not queue for it; the stage is skipped at once."""
    from distill.cascade.runtime import STAGE_SCHEDULER
    from distill.serve.batcher import Batching

    cascade = stage("bm25", RunRanker(), "bm25") >> stage("ce", Pairs())
    cascade.costs = {"bm25": StageCost(), "ce": StageCost(20.0, 0.0)}
    ce = cascade._require_runtime().stages[1]
    out: list = []
    for due_s in (0.010, 0.030):
        batching = Batching(10_000, clock=lambda: 0.0)
        batching.batcher(ce)._running = 1  # the model scores another batch

        def scheduled(batching=batching, due_s=due_s):
            with batching.request(lambda: False, ends_at=due_s):
                return STAGE_SCHEDULER.get()(ce, "q", documents("a"), np.array([10.0]), float("inf"))

        thread = in_thread(scheduled, out)
        if due_s > 0.02:  # 10 ms of slack: it queues (the clock stands still) until the model is free
            queue = batching.batcher(ce)
            until(lambda queue=queue: len(queue._pending) == 1)
            with queue._cond:
                queue._running = 0
                queue._cond.notify_all()
        thread.join(HANG_GUARD_S)
        assert not thread.is_alive()
    skipped, scored = out
    assert skipped[0] is None and list(scored[0]) == [1.0]

"""``distill serve``'s app under FastAPI's test client: ranking, the bound on the body, metrics,
deadline-driven stage skipping and admission control (503 + Retry-After); the 422s naming the field are
in tests/test_serve_errors.py.

Most tests serve :class:`Fake`, a stand-in with the cascade runtime's interface whose costs
are planted and whose ranking is known, and a frozen clock, so no assertion depends on
timing. One test serves a real tiny cascade loaded through ``Cascade.load``.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from distill.core.errors import InputError  # noqa: E402
from distill.serve.app import Calibration, ServeConfig, create_app, steer_deadline  # noqa: E402


@dataclass
class Report:
    name: str
    ran: bool
    ms: float
    n_in: int
    n_out: int
    skipped: str | None = None


class Fake:
    """Two stages: ``first`` keeps the given order (or scores), ``overlap`` counts query words
    in the text and runs only when its planted cost fits the deadline it is handed (the
    runtime's rule). ``gate``, when set, holds every call until it opens (to fill the queue)."""

    def __init__(self, costs: tuple[float, float] = (0.0, 10.0), gate: threading.Event | None = None,
                 measured_ms: float = 0.2) -> None:
        self.costs = costs
        self.gate = gate
        self.measured_ms = measured_ms  # what the stage reports having taken
        self.calls: list[dict] = []
        self.entered = threading.Semaphore(0)

    def estimate_ms(self, n_docs: int) -> list[float]:
        return list(self.costs)

    def rank(self, query, documents, deadline_ms=None, top_k=None, started=None, min_score=None):
        self.calls.append({"query": query, "documents": documents, "deadline_ms": deadline_ms, "top_k": top_k,
                           "started": started})
        self.entered.release()
        if self.gate is not None:
            assert self.gate.wait(timeout=30)
        if documents and documents[0].get("text") == "boom":
            raise RuntimeError("a bug in a stage")
        if documents and documents[0].get("text") == "bad":
            raise InputError("not a document the stage can read", field="documents")
        n = len(documents)
        runs = deadline_ms is None or sum(self.costs) <= deadline_ms
        words = set(query.split())
        if runs:
            scores = [float(len(words & set(d["text"].split()))) for d in documents]
        else:
            scores = [d.get("score", -i) for i, d in enumerate(documents)]
        relevance = [s / (1.0 + s) if s >= 0 else 0.0 for s in scores]  # overlap counts to [0, 1)
        order = [i for i in sorted(range(n), key=lambda i: (-scores[i], i)) if relevance[i] >= (min_score or 0.0)]
        order = order[: top_k or n]
        stages = [Report("first", True, 0.1, n, n),
                  Report("overlap", runs, self.measured_ms if runs else 0.0, n, n if runs else 0,
                         None if runs else "deadline")]
        return SimpleNamespace(ids=[documents[i]["id"] for i in order], scores=[scores[i] for i in order],
                               stages=stages, relevance=[relevance[i] for i in order])

    def __str__(self) -> str:
        return "first >> overlap"


FROZEN = lambda: 1000.0  # noqa: E731 (a clock that never moves: no test depends on timing)


def client(fake: Fake | None = None, clock=FROZEN, **config) -> TestClient:
    return TestClient(create_app(fake or Fake(), ServeConfig(**config), clock=clock))


DOCS = ["plums and pears", "the river in the rain", "rain over the river and the lake"]


def test_ranks_texts_and_reports_the_stages():
    fake = Fake()
    with client(fake) as c:
        r = c.post("/rerank", json={"query": "river rain lake", "documents": DOCS, "top_k": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["id"] for x in body["results"]] == ["2", "1"]
    assert [x["score"] for x in body["results"]] == [3.0, 2.0]
    assert [(s["name"], s["ran"], s["skipped"]) for s in body["stages"]] == [("first", True, None),
                                                                            ("overlap", True, None)]
    assert body["degraded"] is False and body["deadline_ms"] == ServeConfig().deadline_ms
    call = fake.calls[0]
    assert call["top_k"] == 2 and call["started"] == 1000.0
    assert call["deadline_ms"] == ServeConfig().deadline_ms - ServeConfig().margin_ms
    assert call["documents"][1] == {"id": "1", "text": "the river in the rain"}


def test_documents_as_objects_keep_their_ids_and_scores():
    fake = Fake()
    docs = [{"id": "a", "text": "x", "score": 1.5}, {"id": "b", "text": "river", "score": 0.5}]
    with client(fake) as c:
        r = c.post("/rerank", json={"query": "river", "documents": docs})
    assert r.status_code == 200
    assert [x["id"] for x in r.json()["results"]] == ["b", "a"]
    assert fake.calls[0]["documents"] == docs


def test_no_documents_give_no_results():
    with client() as c:
        r = c.post("/rerank", json={"query": "river", "documents": []})
    assert r.status_code == 200 and r.json()["results"] == []


def test_short_deadline_skips_the_expensive_stage():
    with client(Fake(costs=(0.0, 50.0))) as c:
        r = c.post("/rerank", json={"query": "river", "documents": DOCS, "deadline_ms": 20})
        assert r.status_code == 200
        body = r.json()
        assert body["degraded"] is True
        assert body["stages"][1] == {"name": "overlap", "ran": False, "ms": 0.0, "n_in": 3, "n_out": 0,
                                     "skipped": "deadline"}
        assert [x["id"] for x in body["results"]] == ["0", "1", "2"]  # the given order
        text = c.get("/metrics").text
    assert 'distill_stage_skipped_total{stage="overlap"} 1.0' in text
    assert 'distill_requests_total{outcome="degraded"} 1.0' in text


def test_sheds_at_once_when_even_the_first_stage_cannot_fit():
    fake = Fake(costs=(30.0, 100.0))
    with client(fake) as c:
        r = c.post("/rerank", json={"query": "river", "documents": DOCS, "deadline_ms": 25})
        assert r.status_code == 503
        assert int(r.headers["Retry-After"]) >= 1
        assert "deadline" in r.json()["error"]
        assert fake.calls == []  # never reached the cascade
        ok = c.post("/rerank", json={"query": "river", "documents": DOCS, "deadline_ms": 200})
        assert ok.status_code == 200
        assert 'distill_shed_total{reason="deadline"} 1.0' in c.get("/metrics").text


def test_measured_stage_costs_correct_the_cost_model():
    """The overlap stage is modelled at 10 ms but reports 30 ms: once the server has measured
    that, a 25 ms deadline (which the model alone would meet) skips it."""
    fake = Fake(costs=(0.0, 10.0), measured_ms=30.0)
    app = create_app(fake, ServeConfig(), clock=FROZEN)
    payload = {"query": "river", "documents": DOCS, "deadline_ms": 25}
    with TestClient(app) as c:
        degraded = [c.post("/rerank", json=payload).json()["degraded"] for _ in range(8)]
    assert degraded[0] is False and degraded[-1] is True
    assert degraded == sorted(degraded)  # once the factor is learnt it stays
    assert 2.0 < app.state.calibration.get(2)[1] < 4.0


@pytest.mark.parametrize(("elapsed", "modelled", "factors", "expected"), [
    (0.0, [0.0, 10.0, 50.0], [1.0, 1.0, 1.0], (100.0, 3)),  # all fit: the deadline itself
    (0.0, [0.0, 10.0, 50.0], [1.0, 1.0, 2.0], (35.0, 2)),  # the last stage takes 100 ms: stop before it
    (0.0, [0.0, 40.0, 100.0], [1.0, 0.5, 0.5], (150.0, 3)),  # a pessimistic model: let both run, 30 ms slack
    (0.0, [0.0, 40.0, 100.0, 80.0], [1.0, 0.5, 0.5, 1.0], (135.0, 3)),  # ... and stop before the last
    (95.0, [0.0, 10.0, 50.0], [1.0, 1.0, 1.0], (100.0, 1)),  # late already: first stage only
    (0.0, [0.0], [1.0], (100.0, 1)),  # a one-stage cascade
])
def test_steer_deadline(elapsed, modelled, factors, expected):
    steered, planned = steer_deadline(elapsed, 100.0, modelled, factors)
    assert (steered, planned) == pytest.approx(expected)
    # the runtime's rule, with the calibrated times, runs exactly the planned stages
    t, ran = elapsed, 1
    for j in range(1, len(modelled)):
        if t + modelled[j] > steered:
            break
        t += factors[j] * modelled[j]
        ran += 1
    assert ran == planned


def test_calibration_learns_measured_over_modelled_and_fades_to_the_best_when_not_measured():
    now = [0.0]
    calibration = Calibration(clock=lambda: now[0], spreads=0.0, half_life_s=30.0)
    model = [0.0, 10.0, 4.0]
    calibration.observe(model, [Report("a", True, 1.0, 5, 5), Report("b", True, 10.0, 5, 5),
                                Report("c", True, 2.0, 5, 5)])  # c's best ratio: 0.5
    ran = [Report("a", True, 1.0, 5, 5), Report("b", True, 20.0, 5, 5), Report("c", True, 12.0, 5, 5)]
    for _ in range(60):
        calibration.observe(model, ran)
    assert calibration.get(3) == pytest.approx([1.0, 2.0, 3.0], abs=1e-3)  # no model, measured, measured
    now[0] = 30.0  # a half-life later: stage c skipped all along, stage b measured again
    calibration.observe(model, ran[:2] + [Report("c", False, 0.0, 5, 5, "deadline")])
    b_faded = 1.0 + (2.0 - 1.0) * 0.5  # b's best ratio is 1.0
    assert calibration.get(3) == pytest.approx([1.0, 0.8 * b_faded + 0.2 * 2.0, 0.5 + 2.5 * 0.5], abs=1e-3)
    now[0] = 60.0
    assert calibration.get(3)[2] == pytest.approx(0.5 + 2.5 * 0.25, abs=1e-3)


def test_calibration_plans_with_the_spread_of_measurements():
    calibration = Calibration(clock=lambda: 0.0, spreads=2.0)
    for i in range(200):  # ratios alternate 1 and 3: mean 2, mean absolute deviation 1
        calibration.observe([0.0, 10.0], [Report("a", True, 1.0, 5, 5), Report("b", True, 10.0 + 20.0 * (i % 2),
                                                                                5, 5)])
    assert calibration.get(2)[1] == pytest.approx(2.0 + 2.0 * 1.0, abs=0.5)  # the moving mean sways by 0.2


def post_in_background(c: TestClient, payload: dict, out: list) -> threading.Thread:
    thread = threading.Thread(target=lambda: out.append(c.post("/rerank", json=payload)))
    thread.start()
    return thread


def wait_for(predicate, what: str) -> None:
    """Poll server state (not time): the bound only keeps a broken test from hanging."""
    event = threading.Event()
    for _ in range(3000):
        if predicate():
            return
        event.wait(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_admission_control_sheds_on_the_estimated_wait_and_on_a_full_queue():
    gate = threading.Event()
    fake = Fake(costs=(5.0, 60.0), gate=gate)
    app = create_app(fake, ServeConfig(queue_size=2, deadline_ms=200), clock=FROZEN)
    dispatcher = app.state.dispatcher
    payload = {"query": "river", "documents": DOCS}
    answers: list = []
    with TestClient(app) as c:
        threads = [post_in_background(c, payload, answers)]
        assert fake.entered.acquire(timeout=30)  # the worker is busy; the queue is empty
        # the service time is the cost model's 65 ms until one was measured:
        # a second request expects 65 ms of wait + 7 ms (first stage + margin) <= 200 ms: admitted
        threads.append(post_in_background(c, payload, answers))
        wait_for(lambda: dispatcher.queued == 1, "a queued request")
        # a third expects 2 x 65 + 7 = 137 ms: shed under a 130 ms deadline, admitted under 200 ms
        shed = c.post("/rerank", json={**payload, "deadline_ms": 130})
        assert shed.status_code == 503 and "deadline" in shed.json()["error"]
        assert shed.headers["Retry-After"] == "1"
        threads.append(post_in_background(c, payload, answers))
        wait_for(lambda: dispatcher.queued == 2, "two queued requests")
        shed = c.post("/rerank", json={**payload, "deadline_ms": 60_000})  # the queue holds 2
        assert shed.status_code == 503 and "queue_full" in shed.json()["error"]
        metrics = c.get("/metrics").text
        assert "distill_queue_depth 2.0" in metrics and "distill_busy_workers 1.0" in metrics
        assert c.get("/healthz").json()["queue_depth"] == 2
        gate.set()
        for t in threads:
            t.join(timeout=30)
        assert [a.status_code for a in answers] == [200, 200, 200]
        metrics = c.get("/metrics").text
    assert 'distill_shed_total{reason="queue_full"} 1.0' in metrics
    assert 'distill_shed_total{reason="deadline"} 1.0' in metrics
    assert "distill_queue_depth 0.0" in metrics


def test_a_request_whose_wait_outgrew_its_deadline_is_shed_by_the_worker():
    gate = threading.Event()
    now = [0.0]
    fake = Fake(costs=(1.0, 1.0), gate=gate)
    app = create_app(fake, ServeConfig(deadline_ms=50), clock=lambda: now[0])
    answers: list = []
    with TestClient(app) as c:
        first = post_in_background(c, {"query": "a", "documents": DOCS}, answers)
        assert fake.entered.acquire(timeout=30)
        second = post_in_background(c, {"query": "b", "documents": DOCS}, answers)
        wait_for(lambda: app.state.dispatcher.queued == 1, "a queued request")
        now[0] = 1.0  # a second passes while the first request holds the worker
        gate.set()
        first.join(timeout=30)
        second.join(timeout=30)
        assert sorted(a.status_code for a in answers) == [200, 503]
        assert 'distill_shed_total{reason="late"} 1.0' in c.get("/metrics").text
    assert [call["query"] for call in fake.calls] == ["a"]


def test_body_size_is_bounded():
    fake = Fake()
    with client(fake, max_body_bytes=1000) as c:
        r = c.post("/rerank", json={"query": "x", "documents": ["d" * 2000]})
        assert r.status_code == 413 and "1000 bytes" in r.json()["error"]

        def chunks():  # no Content-Length: the limit holds on the bytes read
            yield b'{"query": "x", "documents": ["'
            for _ in range(10):
                yield b"d" * 200
            yield b'"]}'

        r = c.post("/rerank", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert c.post("/rerank", json={"query": "x", "documents": ["d" * 100]}).status_code == 200
    assert len(fake.calls) == 1


def test_healthz_and_metrics():
    with client() as c:
        c.post("/rerank", json={"query": "river", "documents": DOCS})
        health = c.get("/healthz").json()
        assert health["status"] == "ok" and health["cascade"] == "first >> overlap"
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    for name in ("distill_request_seconds_bucket", 'distill_stage_seconds_count{stage="first"} 1.0',
                 'distill_stage_seconds_count{stage="overlap"} 1.0', 'distill_requests_total{outcome="ok"} 1.0',
                 "distill_queue_depth", "distill_service_ms"):
        assert name in r.text


def tiny_lightgbm_spec(tiny_beir, tmp_path):
    """``bm25 % 10 >> lightgbm`` (a tiny LightGBM student) written to ``tmp_path/cascade.json``, the
    LightGBM stage's planted cost 10 s per query (so deadlines skip it by cost, not by clock)."""
    import numpy as np
    import polars as pl

    from distill.cascade.model import StageCost, stage
    from distill.data.beir import load_beir
    from distill.data.bm25 import bm25_run
    from distill.rankers.loading import RunRanker
    from students.lightgbm import LightGBMConfig, LightGBMRanker, train_lightgbm_student

    train = load_beir(tiny_beir, "train")
    run = bm25_run(train, 20).select("qid", "docid")
    teacher = run.with_columns(pl.Series("score", np.random.default_rng(0).normal(size=run.height),
                                         dtype=pl.Float32))
    config = LightGBMConfig(n_estimators=5, min_data_in_leaf=5, num_leaves=8, valid_fraction=0.25)
    folder = train_lightgbm_student(train, run, teacher, tmp_path / "lightgbm", config)
    built = stage("bm25", RunRanker(), "bm25") % 10 >> stage("lightgbm", LightGBMRanker(folder), str(folder))
    built.costs = {"bm25": StageCost(), "lightgbm": StageCost(per_query_ms=10_000.0)}
    built.write_spec(tmp_path / "cascade.json")
    return tmp_path / "cascade.json"


def test_serves_a_real_tiny_cascade(tiny_beir, tmp_path):
    """bm25 >> a tiny LightGBM student, written as a spec and loaded with ``Cascade.load``.
    Its planted costs (10 s per query for LightGBM) decide the skip, not the clock."""
    from distill.cascade.model import Cascade

    tiny_lightgbm_spec(tiny_beir, tmp_path)
    cascade = Cascade.load(tmp_path / "cascade.json", corpus=tiny_beir / "corpus.jsonl")

    corpus = [json.loads(line) for line in (tiny_beir / "corpus.jsonl").read_text().splitlines()][:15]
    docs = [{"id": d["_id"], "text": d["text"], "score": float(15 - i)} for i, d in enumerate(corpus)]
    query = "apple banana what about"
    with TestClient(create_app(cascade, ServeConfig(max_deadline_ms=60_000))) as c:
        full = c.post("/rerank", json={"query": query, "documents": docs, "deadline_ms": 30_000, "top_k": 12})
        short = c.post("/rerank", json={"query": query, "documents": docs, "deadline_ms": 5_000})
        metrics = c.get("/metrics").text
    assert full.status_code == 200, full.text
    body = full.json()
    expected = cascade.rank(query, docs, top_k=12)
    assert [r["id"] for r in body["results"]] == expected.ids
    assert [(s["name"], s["ran"], s["n_in"], s["n_out"]) for s in body["stages"]] == [
        ("bm25", True, 15, 10), ("lightgbm", True, 10, 10)]
    assert short.status_code == 200 and short.json()["degraded"] is True
    assert short.json()["stages"][1]["ran"] is False and "deadline" in short.json()["stages"][1]["skipped"]
    assert [r["id"] for r in short.json()["results"]] == [d["id"] for d in docs]  # the given scores' order
    assert 'distill_stage_skipped_total{stage="lightgbm"} 1.0' in metrics
    assert 'distill_stage_seconds_count{stage="lightgbm"} 1.0' in metrics

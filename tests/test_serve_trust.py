"""``distill serve`` facing clients it cannot trust: slow senders (slowloris), no or a wrong API key,
long documents, a body arriving past its deadline; and models that fail. Big bodies are tested in
tests/test_serve_bodies.py, rankers called from many threads in tests/test_serve_threads.py.

The slow-client tests run a real uvicorn server in a thread on a loopback port (the protection
lives in the HTTP protocol, below what FastAPI's test client exercises); their assertions are
on events (a 200, a 408, a closed socket, counted metrics), never on durations.
"""

from __future__ import annotations

import json
import logging
import select
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from test_serve import DOCS, FROZEN, Fake, wait_for  # noqa: E402

from distill.core.errors import ConfigError, InputError  # noqa: E402
from distill.inference.lengths import REFERENCE_TOKENS, pair_weights  # noqa: E402
from distill.serve.app import ServeConfig, create_app  # noqa: E402

# -- slow clients ---------------------------------------------------------------------------------


@contextmanager
def live(app, config: ServeConfig, **protocol) -> Iterator[tuple[int, object]]:
    """``app`` served by uvicorn as :func:`distill.serve.app.run_server` serves it; yields the port and server."""
    import uvicorn

    from distill.serve.edge import uvicorn_config

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn_config(app, config, **protocol))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started, "the server to start")
    try:
        yield sock.getsockname()[1], server
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def half_sent(port: int, data: bytes = b"POST /rerank HTTP/1.1\r\nHost: x\r\n") -> socket.socket:
    """A connection that sends the start of a request and then waits."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(data)
    return s


def read_all(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def honest(port: int, payload: dict | None = None) -> tuple[int, dict]:
    import httpx

    r = httpx.post(f"http://127.0.0.1:{port}/rerank", json=payload or {"query": "rain", "documents": DOCS},
                   timeout=30)
    return r.status_code, r.json() if r.headers.get("content-type", "").startswith("application/json") else {}


def dropped(app, reason: str) -> float:
    return app.state.metrics.registry.get_sample_value("distill_dropped_connections_total", {"reason": reason}) or 0


def answered(sockets: list[socket.socket]) -> list[socket.socket]:
    """The sockets the server has sent something to (without reading it)."""
    return select.select(sockets, [], [], 0)[0] if sockets else []


def test_half_sent_requests_do_not_lock_honest_clients_out():
    """Connections holding every slot of ``max_connections 8`` with half a request each (uvicorn
    alone then answers everyone 503): each new connection evicts the slowest of them, with a 408."""
    config = ServeConfig(max_connections=8, request_timeout_s=600.0)
    app = create_app(Fake(), config, clock=FROZEN)
    with live(app, config) as (port, server):
        slow = [half_sent(port) for _ in range(8)]
        wait_for(lambda: dropped(app, "evicted") == 1 and len(server.server_state.connections) == 7,
                 "the eighth connection to evict one")
        answers = [honest(port) for _ in range(3)]
        assert [status for status, _ in answers] == [200, 200, 200], answers
        assert dropped(app, "evicted") == 2  # the first honest one made room; then the slots sufficed
        wait_for(lambda: len(answered(slow)) == 2, "the evicted two to be answered")
        evicted = answered(slow)
        assert all(read_all(s).startswith(b"HTTP/1.1 408") for s in evicted)
        kept = next(s for s in slow if s not in evicted)
        kept.sendall(b"\r\n")  # one that was not evicted finishes its request (no body: 422)
        assert kept.recv(65536).startswith(b"HTTP/1.1 422")


def test_a_request_not_received_in_time_gets_408_while_slow_answers_are_kept():
    """The timeout bounds receiving a request (headers and body, on a new or a kept-alive
    connection), not answering it: a request the cascade holds longer than the timeout is answered."""
    gate = threading.Event()
    fake = Fake(gate=gate)
    config = ServeConfig(request_timeout_s=0.3)
    app = create_app(fake, config, clock=FROZEN)
    results: list = []
    with live(app, config) as (port, _):
        slow_answer = threading.Thread(target=lambda: results.append(honest(port)))
        slow_answer.start()
        assert fake.entered.acquire(timeout=30)  # received whole: now held by the cascade
        stalled = half_sent(port)  # headers never finished
        body = json.dumps({"query": "rain", "documents": DOCS}).encode()
        no_body = half_sent(port, b"POST /rerank HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                            b"content-length: %d\r\n\r\n" % len(body) + body[:10])  # body never finished
        assert read_all(stalled).startswith(b"HTTP/1.1 408")
        assert read_all(no_body).startswith(b"HTTP/1.1 408")
        gate.set()  # the first request was held past the timeout all along
        slow_answer.join(timeout=30)
        kept = socket.create_connection(("127.0.0.1", port), timeout=30)  # keep-alive: a second request stalls
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = kept.recv(65536)
        kept.sendall(b"GET /healthz HTTP/1.1\r\n")
        both = first + read_all(kept)
        assert both.startswith(b"HTTP/1.1 200") and both.count(b"HTTP/1.1 ") == 2
        assert b"HTTP/1.1 408 Request Timeout" in both
    assert results[0][0] == 200
    assert dropped(app, "request_timeout") == 3


def test_a_full_queue_refuses_before_parsing_the_body():
    gate = threading.Event()
    fake = Fake(gate=gate)
    app = create_app(fake, ServeConfig(queue_size=1), clock=FROZEN)
    answers: list = []
    with TestClient(app) as c:
        threads = [threading.Thread(target=lambda: answers.append(c.post("/rerank", json={"query": "a",
                                                                                          "documents": DOCS})))
                   for _ in range(2)]
        threads[0].start()
        assert fake.entered.acquire(timeout=30)
        threads[1].start()
        wait_for(lambda: app.state.dispatcher.queued == 1, "a queued request")
        r = c.post("/rerank", content=b'{"query": "x", "documents": [', headers={"content-type": "application/json"})
        assert r.status_code == 503 and "queue_full" in r.json()["error"]  # not parsed: no 422
        gate.set()
        for t in threads:
            t.join(timeout=30)
    assert [a.status_code for a in answers] == [200, 200]


# -- authentication, docs, bind ---------------------------------------------------------------------


def test_an_api_key_guards_every_endpoint_but_healthz():
    fake = Fake()
    with TestClient(create_app(fake, ServeConfig(api_key="s3cret"), clock=FROZEN)) as c:
        payload = {"query": "rain", "documents": DOCS}
        assert c.post("/rerank", json=payload).status_code == 401
        wrong = c.post("/rerank", json=payload, headers={"Authorization": "Bearer s3cre"})
        assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
        assert c.post("/rerank", json=payload, headers={"Authorization": "Basic s3cret"}).status_code == 401
        assert c.get("/metrics").status_code == 401
        assert c.get("/healthz").status_code == 200
        ok = c.post("/rerank", json=payload, headers={"Authorization": "bearer s3cret"})
        assert ok.status_code == 200, ok.text
        text = c.get("/metrics", headers={"Authorization": "Bearer s3cret"}).text
    assert 'distill_rejected_total{reason="unauthorized"} 4.0' in text
    assert len(fake.calls) == 1


def test_the_api_key_is_not_shown_and_not_empty():
    assert "s3cret" not in repr(ServeConfig(api_key="s3cret"))
    for bad in ("", "  "):
        with pytest.raises(ConfigError):
            ServeConfig(api_key=bad)


def test_the_cli_takes_the_key_from_the_environment(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import distill.serve.app
    from distill.app.cli import app, register_commands

    seen: list[ServeConfig] = []
    monkeypatch.setattr(distill.serve.app, "run_server", lambda spec, config, **_: seen.append(config))
    register_commands()
    result = CliRunner().invoke(app, ["serve", str(tmp_path / "cascade.json"), "--docs"],
                                env={"DISTILL_API_KEY": "from-env"})
    assert result.exit_code == 0, result.output
    assert seen[0].api_key == "from-env" and seen[0].docs is True and seen[0].request_timeout_s == 10.0


def test_docs_are_off_unless_asked():
    with TestClient(create_app(Fake(), ServeConfig(), clock=FROZEN)) as c:
        assert c.get("/docs").status_code == 404 and c.get("/openapi.json").status_code == 404
    with TestClient(create_app(Fake(), ServeConfig(docs=True), clock=FROZEN)) as c:
        assert c.get("/docs").status_code == 200
        schema = c.get("/openapi.json").json()
    body = schema["paths"]["/rerank"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"query", "documents", "top_k", "deadline_ms"} <= set(body["properties"])


def test_a_bind_beyond_loopback_is_warned_about(monkeypatch, caplog):
    from distill.cascade.model import Cascade
    from distill.serve.app import run_server
    from distill.serve.auth import bind_warning, is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    assert bind_warning("127.0.0.1", None) is None
    assert "no API key" in bind_warning("0.0.0.0", None) and "no API key" not in bind_warning("0.0.0.0", "k")

    def refuse(*_, **__):
        raise InputError("stop here")

    monkeypatch.setattr(Cascade, "load", classmethod(refuse))
    with caplog.at_level(logging.WARNING, logger="distill.serve.app"), pytest.raises(InputError):
        run_server("cascade.json", ServeConfig(host="0.0.0.0"))
    assert "reachable from other machines" in caplog.text


# -- long documents and model faults ------------------------------------------------------------------


class ByLength(Fake):
    """The Fake whose second stage costs ``per_pair`` ms per reference pair
    (:func:`distill.inference.lengths.pair_weights`), planned and measured alike."""

    def __init__(self, per_pair: float = 1.0) -> None:
        super().__init__(costs=(0.0, 0.0))
        self.per_pair = per_pair

    def estimate_ms(self, n_docs):
        pairs = n_docs if isinstance(n_docs, int) else float(pair_weights(n_docs).sum())
        return [0.0, self.per_pair * pairs]

    def rank(self, query, documents, deadline_ms=None, top_k=None, started=None, min_score=None):
        self.costs = tuple(self.estimate_ms([len(query) + len(d.get("text", "")) for d in documents]))
        self.measured_ms = self.costs[1]  # the stage takes exactly what it is planned at
        return super().rank(query, documents, deadline_ms, top_k, started, min_score)


def test_a_request_of_long_documents_is_degraded_and_does_not_skew_later_ones():
    """Ten 20,000-character documents weigh ~20 reference pairs each: ~195 ms of the stage. Under
    a 1 s deadline it runs, and the server, which planned it by length, learns a cost factor of 1
    (planned by count, 10 ms, it learnt ~20, and ordinary requests under 50 ms lost the stage);
    under 50 ms it is skipped."""
    fake = ByLength(per_pair=1.0)
    app = create_app(fake, ServeConfig(), clock=FROZEN)
    ordinary = {"query": "rain", "documents": DOCS * 3, "deadline_ms": 50}
    long = {"query": "rain", "documents": ["rain " * 4000] * 10}
    with TestClient(app) as c:
        before = [c.post("/rerank", json=ordinary).json()["degraded"] for _ in range(5)]
        full = c.post("/rerank", json={**long, "deadline_ms": 1000}).json()
        degraded = c.post("/rerank", json={**long, "deadline_ms": 50}).json()
        after = [c.post("/rerank", json=ordinary).json()["degraded"] for _ in range(5)]
    assert before == after == [False] * 5
    assert full["degraded"] is False and full["stages"][1]["ms"] == pytest.approx(195.4, abs=0.1)
    assert degraded["degraded"] is True and degraded["stages"][1]["ran"] is False
    assert app.state.calibration.get(2)[1] == pytest.approx(1.0)
    assert pair_weights([20_004])[0] == pytest.approx(20_004 / 4 / REFERENCE_TOKENS)


def nan_cascade(tmp_path):
    """``bm25 >> broken``: the second stage's model returns NaN for every document."""
    from distill.cascade.model import stage
    from distill.rankers.base import BaseRanker
    from distill.rankers.loading import RunRanker

    class Broken(BaseRanker):
        name = "broken"

        def score_documents(self, query, docs):
            return np.full(len(docs), np.nan)

        def rerank(self, dataset, run):
            raise NotImplementedError

        def get_config_dict(self):
            return {}

    return stage("bm25", RunRanker(), "bm25") >> stage("broken", Broken())


def test_a_model_returning_nan_is_a_server_error(tmp_path):
    with TestClient(create_app(nan_cascade(tmp_path), ServeConfig(deadline_ms=60_000))) as c:
        r = c.post("/rerank", json={"query": "rain", "documents": DOCS})
        assert r.status_code == 500 and "model fault" in r.json()["error"] and "broken" in r.json()["error"]
        text = c.get("/metrics").text
    assert 'distill_requests_total{outcome="error"} 1.0' in text
    assert 'outcome="invalid"' not in text


# -- a big body arriving slowly -------------------------------------------------------------------


class Late:
    """ASGI middleware moving the test clock ``now[0]`` 200 ms each time the app receives a body part:
    a body that arrives slowly, past a 100 ms deadline."""

    def __init__(self, app, now: list[float]) -> None:
        self.app, self.now = app, now

    async def __call__(self, scope, receive, send):
        async def slow():
            message = await receive()
            self.now[0] += 0.2
            return message

        await self.app(scope, slow, send)


def test_a_big_body_whose_deadline_passed_while_it_arrived_is_shed_before_validation():
    now = [0.0]
    fake = Fake()
    app = create_app(fake, ServeConfig(), clock=lambda: now[0])
    docs = [f"the river in the rain {i} " + "x" * 1000 for i in range(400)]

    with TestClient(Late(app, now)) as c:  # the clock moves 200 ms while the body arrives
        late = c.post("/rerank", json={"query": "q", "documents": docs})
        late_bad = c.post("/rerank", json={"query": "q", "documents": docs + [5], "deadline_ms": 150})
        in_time = c.post("/rerank", json={"query": "q", "documents": docs, "deadline_ms": 1000})
    assert late.status_code == 503 and "deadline" in late.json()["error"]
    assert late_bad.status_code == 503  # not even validated
    assert in_time.status_code == 200
    assert len(fake.calls) == 1

"""``distill serve`` and big request bodies: decoded in steps that yield to the event loop, invalid JSON
located as json.loads locates it, and bodies over ``big_body_bytes`` admitted before they are read.

The cascade is tests/test_serve.py's :class:`Fake` under a frozen clock: no assertion depends on timing.
"""

from __future__ import annotations

import json
import threading

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from test_serve import DOCS, FROZEN, Fake, wait_for  # noqa: E402

from distill.serve.app import ServeConfig, create_app  # noqa: E402


def test_a_big_body_is_decoded_in_steps_as_json_loads_decodes_it():
    import asyncio

    from distill.serve.stepwise_json import STEP_CHARS, decode_in_steps

    docs = [{"id": f"d{i}", "text": f"doc {i} " * 300, "score": i / 7} for i in range(400)]
    body = json.dumps({"query": "q", "documents": docs, "top_k": 3, "nested": {"documents": [1]}}, indent=1).encode()
    assert len(body) > 3 * STEP_CHARS
    ticks = []

    async def both():
        stop = asyncio.Event()

        async def tick():  # runs only when the decoder yields
            while not stop.is_set():
                ticks.append(1)
                await asyncio.sleep(0)

        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0)
        decoded = await decode_in_steps(body)
        stop.set()
        await ticker
        return decoded

    assert asyncio.run(both()) == json.loads(body)
    assert len(ticks) >= len(body) // STEP_CHARS


@pytest.mark.parametrize(("body", "where"), [
    (b'{"query": "q", "documents": [{"text": "a"} {"text": "b"}]}', 43),
    (b'{"query": "q", "documents": [1, 2', 33),
    (b'{"query": "q" "documents": []}', 14),
    (b'{"query": "q", "documents": [NaN]}', 29),
    (b'{"query": "q", "documents": []} x', 32),
    (b'{"query": "q", "documents": ["\xff"]}', 30),
])
def test_invalid_json_is_located_when_decoded_in_steps(body, where):
    """At the character json.loads names (NaN and bytes that are not UTF-8: where they start)."""
    import asyncio

    from distill.serve.stepwise_json import decode_in_steps

    with pytest.raises(json.JSONDecodeError) as err:
        asyncio.run(decode_in_steps(body))
    assert err.value.pos == where


def test_big_bodies_are_answered_like_small_ones():
    fake = Fake()
    docs = [f"the river in the rain {i} " + "x" * 1000 for i in range(400)]
    with TestClient(create_app(fake, ServeConfig(), clock=FROZEN)) as c:
        ok = c.post("/rerank", json={"query": "river rain", "documents": docs, "top_k": 2})
        bad = c.post("/rerank", content=json.dumps({"query": "q", "documents": docs}).encode()[:-1],
                     headers={"content-type": "application/json"})
        wrong = c.post("/rerank", json={"query": "q", "documents": docs + [5]})
        array = c.post("/rerank", json=[{"query": "q", "documents": docs}])
    assert ok.status_code == 200 and len(ok.json()["results"]) == 2
    assert bad.status_code == 422 and bad.json()["error"].startswith("body: invalid JSON")
    assert wrong.status_code == 422 and wrong.json()["error"].startswith("documents[400]")
    assert array.status_code == 422 and array.json()["error"] == "body: Input should be an object"

# -- big bodies admitted before they are read -------------------------------------------------------

JSON = {"content-type": "application/json"}


class Reads:
    """ASGI middleware counting the body parts the app reads (a body refused before reading has none)."""

    def __init__(self, app) -> None:
        self.app, self.parts = app, 0

    async def __call__(self, scope, receive, send):
        async def counted():
            message = await receive()
            self.parts += message["type"] == "http.request"
            return message

        await self.app(scope, counted, send)


def rejected(app, reason: str) -> float:
    return app.state.metrics.registry.get_sample_value("distill_rejected_total", {"reason": reason}) or 0


def big_body(**fields) -> bytes:
    """A valid request of ~22 KB: over a ``big_body_bytes`` of 10,000."""
    return json.dumps({"query": "river", "documents": [f"the river {i} " + "x" * 100 for i in range(200)],
                       **fields}).encode()


def in_thread(target, answers: list) -> threading.Thread:
    thread = threading.Thread(target=lambda: answers.append(target()))
    thread.start()
    return thread


def test_a_big_body_that_cannot_be_served_in_time_is_refused_before_it_is_read():
    gate = threading.Event()
    fake = Fake(gate=gate)
    app = create_app(fake, ServeConfig(big_body_bytes=10_000), clock=FROZEN)
    reads = Reads(app)
    small = json.dumps({"query": "river", "documents": DOCS, "deadline_ms": 5000}).encode()
    answers: list = []
    with TestClient(reads) as c:
        threads = [in_thread(lambda: c.post("/rerank", content=small, headers=JSON), answers)]
        assert fake.entered.acquire(timeout=30)
        app.state.dispatcher.measured(service_ms=500.0)  # the expected wait (500 ms) exceeds the default deadline
        parts = reads.parts
        refused = c.post("/rerank", content=big_body(deadline_ms=5000), headers=JSON)  # its deadline is unread
        assert reads.parts == parts  # refused before a byte of its body was read
        # below the bound a body is read and admitted by its own deadline, as before; above it, by its header's
        threads.append(in_thread(lambda: c.post("/rerank", content=small, headers=JSON), answers))
        threads.append(in_thread(lambda: c.post("/rerank", content=big_body(), headers={
            **JSON, "X-Request-Timeout-Ms": "5000"}), answers))
        wait_for(lambda: app.state.dispatcher.queued == 2, "two queued requests")
        gate.set()
        for t in threads:
            t.join(timeout=30)
        metrics = c.get("/metrics").text
    assert refused.status_code == 503 and "big_body" in refused.json()["error"]
    assert refused.headers["retry-after"] == "1" and refused.json()["retry_after_s"] == 1
    assert [a.status_code for a in answers] == [200, 200, 200] and len(fake.calls) == 3
    assert rejected(app, "big_body") == 1 and 'distill_rejected_total{reason="big_body"} 1.0' in metrics


def test_big_bodies_are_read_one_at_a_time_within_their_deadline():
    gate = threading.Event()
    fake = Fake(gate=gate)
    app = create_app(fake, ServeConfig(big_body_bytes=10_000, max_big_bodies=1), clock=FROZEN)
    reads = Reads(app)
    answers: list = []
    with TestClient(reads) as c:
        first = in_thread(lambda: c.post("/rerank", content=big_body(), headers={**JSON, "X-Request-Timeout-Ms":
                                                                                  "60000"}), answers)
        assert fake.entered.acquire(timeout=30)  # it holds the one turn until it is answered
        parts = reads.parts
        second = c.post("/rerank", content=big_body(), headers={**JSON, "X-Request-Timeout-Ms": "50"})
        assert reads.parts == parts  # no turn came within its deadline: refused unread
        small = json.dumps({"query": "river", "documents": DOCS, "deadline_ms": 5000}).encode()
        third = in_thread(lambda: c.post("/rerank", content=small, headers=JSON), answers)
        wait_for(lambda: app.state.dispatcher.queued == 1, "the small body queued")  # it took no turn
        gate.set()
        for t in (first, third):
            t.join(timeout=30)
    assert second.status_code == 503 and "big_body" in second.json()["error"]
    assert [a.status_code for a in answers] == [200, 200] and rejected(app, "big_body") == 1


def test_a_refused_body_is_not_read_at_once_and_its_client_still_gets_the_answer(monkeypatch):
    """A body over the limit is refused from its declared length; with more than UNREAD_LIMIT of it still to come
    the server stops reading for LINGER_S (here long: the client's send blocks) instead of draining it at once.
    Clients, asyncio ones included, get the 413, and the connection stays usable for the next request."""
    import asyncio
    import socket

    import httpx
    from test_serve_trust import live

    from distill.serve import edge

    config = ServeConfig(max_body_bytes=1000)
    app = create_app(Fake(), config, clock=FROZEN)
    size = 64 * 2**20  # far more than the socket buffers hold
    with live(app, config) as (port, _):
        async def post_async() -> list[int]:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
                return [(await c.post("/rerank", content=b"x" * size)).status_code,
                        (await c.post("/rerank", json={"query": "x", "documents": ["d"]})).status_code]

        assert asyncio.run(post_async()) == [413, 200]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            assert c.post("/rerank", content=b"x" * size).status_code == 413
            assert c.post("/rerank", content=b"x" * (edge.UNREAD_LIMIT // 2)).status_code == 413
            assert c.post("/rerank", json={"query": "x", "documents": ["d"]}).status_code == 200

        monkeypatch.setattr(edge, "LINGER_S", 60.0)
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(b"POST /rerank HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                  b"content-length: %d\r\n\r\n" % size)
        answer = b""
        while b"bytes" not in answer:
            answer += s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 413") and b"larger than 1000 bytes" in answer
        s.settimeout(2.0)
        with pytest.raises(TimeoutError):  # the server reads nothing more for now: the socket buffers fill
            for _ in range(size // 65536):
                s.sendall(b"x" * 65536)
        s.close()


def test_the_next_request_after_a_refused_body_is_timed_from_its_own_start():
    """On a kept-alive connection, a request refused before its body arrived ends when its body has; the next
    request is timed from its own first byte (before, the refused one's timer kept running and dropped it: 408)."""
    import socket
    import time

    from test_serve_trust import live, read_all

    config = ServeConfig(max_body_bytes=1000, request_timeout_s=1.0)
    app = create_app(Fake(), config, clock=FROZEN)
    with live(app, config) as (port, _):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(b"POST /rerank HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 2000\r\n"
                  b"\r\n")
        answer = b""
        while b"bytes" not in answer:
            answer += s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 413")
        s.sendall(b"x" * 2000)  # the refused body arrives after its answer
        time.sleep(1.5)  # past the first request's timeout, idle on a kept-alive connection
        body = json.dumps({"query": "x", "documents": ["d"]}).encode()
        s.sendall(b"POST /rerank HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\nconnection: close\r\n"
                  b"content-length: %d\r\n\r\n%s" % (len(body), body))
        assert read_all(s).startswith(b"HTTP/1.1 200")

"""The HTTP edge of ``distill serve``: a bounded time to receive each request, and bounded bodies.

uvicorn bounds neither the time a client may take to send a request (its keep-alive timeout
restarts on every byte, and a connection that sends nothing is never timed out) nor, under
its connection limit, who gets a slot: a few clients sending half a request and waiting
("slowloris") hold every slot, and uvicorn answers everyone else 503. ASGI middleware cannot
help, since it sees a request only once its headers are complete. :class:`TimedH11Protocol`
is uvicorn's h11 protocol with

- a **request timeout**: from the connection's first moment, or the first byte of a next
  request on a kept-alive one, until the request's last body byte; on expiry the client gets
  ``408 Request Timeout`` and the connection is closed;
- **eviction at the limit**: a connection opened when the server is at ``limit_concurrency``
  closes, with the same 408, the connection whose request is arriving slowest (fewest bytes per
  second since it began, a request younger than ``GRACE_S`` last; a connection being answered,
  or idle between requests, is never evicted). Honest clients send a request in milliseconds, so
  they keep being served however many slow ones hold or retake slots; the slow ones are dropped;
- a **pause after a refusal**: a request answered before its body arrived, with more than
  ``UNREAD_LIMIT`` of it still to come, is read no further for ``LINGER_S`` (uvicorn would drain it at
  once), so a client posting oversized bodies in a loop is refused at most once per ``LINGER_S``.

It is the h11 protocol on purpose (uvicorn's "auto" picks httptools where installed): h11
states whether a request is complete (``their_state``), which the timer needs. This module
imports uvicorn: :mod:`distill.serve.app` imports it only where it serves.
:class:`BodyReader` (ASGI middleware) stamps each request's arrival and reads its body up to
a size (413 beyond, on the declared length before a byte is read; in the shape of the path's API).
A big body is admitted before it is read (:class:`BigBodies`): receiving and decoding one on the
event loop costs every other request time, and when it would be shed anyway the work is lost.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from distill.serve.request import DEADLINE_HEADER, header_deadline

if TYPE_CHECKING:
    from distill.serve.app import ServeConfig

REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                   b"connection: close\r\ncontent-length: 39\r\n\r\nrequest not received within the timeout")
LINGER_S = 0.5  # a dropped connection's input is read and discarded this long before it closes
UNREAD_LIMIT = 256 * 1024  # body bytes still to come past which a refused request's reading pauses LINGER_S
GRACE_S = 0.05  # a request arriving for less long has shown no rate yet: evicted last
RECEIVING = (h11.IDLE, h11.SEND_BODY)  # the client's side of a request not yet complete


class _Cycles(h11.Connection):
    """h11's server connection, calling ``on_next`` when a request/response cycle ends and the next begins."""

    def __init__(self, on_next: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(h11.SERVER, **kwargs)
        self.on_next = on_next

    def start_next_cycle(self) -> None:
        super().start_next_cycle()
        self.on_next()


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request timeout and eviction at the limit (module docstring)."""

    def __init__(self, *args: Any, request_timeout_s: float, on_drop: Callable[[str], None] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        size = self.config.h11_max_incomplete_event_size  # as uvicorn builds its connection, but told of each cycle
        self.conn = _Cycles(self._next_request, **({} if size is None else {"max_incomplete_event_size": size}))
        self.request_timeout_s = request_timeout_s
        self.on_drop = on_drop
        self.timer: Any = None  # armed while a request is arriving
        self.since = 0.0  # when it started arriving (loop time)
        self.received = 0  # bytes of it so far
        self.dropped = False  # 408 sent: what the client still sends is discarded until the close

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm()
        self._make_room()

    def data_received(self, data: bytes) -> None:
        if self.dropped:
            return
        if self.timer is None and self.conn.their_state in RECEIVING:
            self._arm()
        self.received += len(data)
        super().data_received(data)
        if self.timer is not None and self.conn.their_state not in RECEIVING:
            self._disarm()  # complete (or refused with 400): the request's own handling begins

    def on_response_complete(self) -> None:
        """A response sent before its request's body arrived (a refusal: 413, 503 ``big_body``, a shed) leaves
        uvicorn reading the rest through h11 at once and discarding it, to keep the connection: a client posting
        8 MB bodies in a loop over loopback was refused ~200 times a second (measured), every byte received and
        parsed on the event loop, time taken from every other request. With more than ``UNREAD_LIMIT``
        still to come (or an unknown length), reading pauses for ``LINGER_S`` first: such a client sends at most one
        body per ``LINGER_S``, and the connection is kept. Closing it unread, as Go's net/http does, would be
        cheaper still, but the reset makes asyncio clients (httpx's AsyncClient among them) lose the answer already
        sent: tried, they saw a ReadError instead of the 413."""
        super().on_response_complete()
        if self.transport.is_closing() or self.conn.their_state is not h11.SEND_BODY:
            return
        declared = dict(self.headers or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) - self.received <= UNREAD_LIMIT:
            return  # little left: read at once
        self.transport.pause_reading()
        self.loop.call_later(LINGER_S, self._resume)

    def _resume(self) -> None:
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def _next_request(self) -> None:
        """A request and its answer are done (a refused one's body included): its timer ends with it, and the
        next request on the connection is timed, and its bytes counted, from its own first byte."""
        self._disarm()
        self.received = 0

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self.since, self.received = self.loop.time(), 0
        self.timer = self.loop.call_later(self.request_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expired(self) -> None:
        self.timer = None
        if not self.transport.is_closing() and self.conn.their_state in RECEIVING:
            self.drop("request_timeout")

    def rate(self, now: float) -> float:
        """Bytes per second of the request arriving (the lowest rate is evicted first); infinite
        within ``GRACE_S`` of its start, before which its first bytes may not have been read."""
        age = now - self.since
        return float("inf") if age < GRACE_S else self.received / age

    def _make_room(self) -> None:
        """At the connection limit (uvicorn answers 503 from ``limit_concurrency`` connections on, this
        one included), close the connections whose requests arrive slowest until below it."""
        limit = self.limit_concurrency
        if limit is None or len(self.connections) < limit:
            return
        now = self.loop.time()
        arriving = sorted((c for c in self.connections if c is not self and getattr(c, "timer", None) is not None),
                          key=lambda c: c.rate(now))
        for slowest in arriving[: len(self.connections) - limit + 1]:
            slowest.drop("evicted")

    def drop(self, reason: str) -> None:
        """Free the connection's slot now: answer 408 where no response has begun, end the request
        the app may be waiting on, and close gracefully: the end of output, then the client's bytes
        read and discarded for ``LINGER_S`` before the socket closes (closed with unread input, it
        would reset, and the client would lose the 408)."""
        self._disarm()
        self.connections.discard(self)
        self.dropped = True
        if self.cycle is None or self.cycle.response_complete or not self.cycle.response_started:
            self.transport.write(REQUEST_TIMEOUT)
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the app's receive() now returns http.disconnect
            self.cycle.message_event.set()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)
        if self.on_drop is not None:
            self.on_drop(reason)


def uvicorn_config(app: Any, config: ServeConfig, access_log: bool = False, **options: Any) -> Any:
    """The ``uvicorn.Config`` that serves ``app`` (from :func:`distill.serve.app.create_app`) with ``config``'s
    limits over :class:`TimedH11Protocol`, counting dropped connections in the app's metrics;
    ``options`` go to ``uvicorn.Config``."""
    import uvicorn

    dropped = app.state.metrics.dropped
    http = functools.partial(TimedH11Protocol, request_timeout_s=config.request_timeout_s,
                             on_drop=lambda reason: dropped.labels(reason).inc())
    return uvicorn.Config(app, host=config.host, port=config.port, log_level="warning", access_log=access_log,
                          limit_concurrency=config.max_connections, timeout_graceful_shutdown=5, http=http,
                          **options)


class BigBodies:
    """Admission of big bodies before they are read. Receiving, joining and decoding a body runs on the
    event loop (~27 ms of CPU for an 8 MB body; ~7 ms to refuse one unread: measured), time taken from every
    other request and contending for the GIL with the workers; a body that is shed after all that is work lost.
    A body larger than ``config.big_body_bytes`` (declared, or once that much has arrived) takes one of
    ``config.max_big_bodies`` turns before it is read, held until it is answered; it is refused with 503
    while the server is starting, when the queue's expected wait leaves no time within its deadline, or when
    no turn comes within it (it waits unread: uvicorn pauses reading past 64 KB). Its deadline is the one its
    headers give (``X-Request-Timeout-Ms``, else the server's default): a body's own ``deadline_ms`` is not
    known before it is read."""

    def __init__(self, service: Any) -> None:
        self.service, self.config = service, service.config
        self.turns = asyncio.Semaphore(self.config.max_big_bodies)

    def budget_ms(self, scope: dict, arrival: float) -> float:
        """Milliseconds the request may still wait for a turn: its header deadline less the time since
        ``arrival``, the answer's margin and the expected wait for a worker (<= 0: refuse)."""
        service, config = self.service, self.config
        if not service.ready.is_set():
            return 0.0
        header = dict(scope.get("headers") or []).get(DEADLINE_HEADER.lower().encode())
        header_ms, _ = header_deadline(None if header is None else header.decode("latin-1"), config)
        deadline = config.deadline_ms if header_ms is None else header_ms
        dispatcher = service.dispatcher
        return (deadline - service.ms_since(arrival) - dispatcher.margin_ms(config.margin_ms)
                - dispatcher.wait_ms(0.0))


class Turn:
    """One request's hold on a :class:`BigBodies` turn (none where ``bodies`` is None: no service to admit by)."""

    def __init__(self, bodies: BigBodies | None, scope: dict, arrival: float) -> None:
        self.bodies, self.scope, self.arrival = bodies, scope, arrival
        self.held = False

    async def need(self, size: int) -> bool:
        """Whether a body of ``size`` bytes may be read: True at once for one within the bound (or with a turn
        held); otherwise after taking a turn within the budget, False when refused."""
        bodies = self.bodies
        if bodies is None or self.held or size <= bodies.config.big_body_bytes:
            return True
        budget = bodies.budget_ms(self.scope, self.arrival)
        if budget <= 0:
            return False
        try:
            await asyncio.wait_for(bodies.turns.acquire(), budget / 1000.0)
        except TimeoutError:
            return False
        self.held = True
        return bodies.budget_ms(self.scope, self.arrival) > 0  # the wait may have grown meanwhile

    def release(self) -> None:
        if self.held:
            self.bodies.turns.release()
            self.held = False


class BodyReader:
    """ASGI middleware: stamps each request's arrival (``request.state.arrival``, the start of its
    deadline) and reads its body up to ``max_bytes`` (413 beyond, ``on_reject("too_large")``), so
    no body is held unbounded; a big body is read only with a turn (:class:`BigBodies`, 503 and
    ``on_reject("big_body")`` where refused; the app's ``state.service`` admits it)."""

    def __init__(self, app: Any, max_bytes: int, clock: Callable[[], float],
                 on_reject: Callable[[str], None] | None = None) -> None:
        self.app, self.max_bytes, self.clock, self.on_reject = app, max_bytes, clock, on_reject
        self.big: BigBodies | None = None

    def _big_bodies(self, scope: dict) -> BigBodies | None:
        if self.big is None:
            service = getattr(getattr(scope.get("app"), "state", None), "service", None)
            self.big = None if service is None else BigBodies(service)
        return self.big

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        arrival = scope.setdefault("state", {})["arrival"] = self.clock()
        declared = dict(scope.get("headers") or []).get(b"content-length")
        size = int(declared) if declared is not None and declared.isdigit() else 0
        turn = Turn(self._big_bodies(scope), scope, arrival)
        try:
            if size > self.max_bytes:
                await self._refuse(scope, send, "too_large")
            elif not await turn.need(size):
                await self._refuse(scope, send, "big_body")
            elif (body := await self._read(receive, turn)) is None:
                return  # the client went away
            elif isinstance(body, str):
                await self._refuse(scope, send, body)
            else:
                whole = [{"type": "http.request", "body": body, "more_body": False}]

                async def replay() -> dict:
                    return whole.pop() if whole else await receive()

                await self.app(scope, replay, send)
        finally:
            turn.release()

    async def _read(self, receive: Callable, turn: Turn) -> bytes | str | None:
        """The body, or why it is refused (``too_large``, ``big_body``), or None where the client went away."""
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return "too_large"
            if not await turn.need(size):
                return "big_body"
            more = message.get("more_body", False)
        return b"".join(chunks)

    async def _refuse(self, scope: dict, send: Callable, reason: str) -> None:
        """413 (``too_large``) or 503 with ``Retry-After`` (``big_body``), in the shape of the path's API
        (:func:`distill.serve.compat.error_body`)."""
        from starlette.responses import JSONResponse

        from distill.serve.compat import error_body

        if self.on_reject is not None:
            self.on_reject(reason)
        if reason == "too_large":
            status, error, headers, extra = 413, f"body: larger than {self.max_bytes} bytes", None, {}
        else:  # as the service's own 503s: Retry-After and retry_after_s
            status, headers, extra = 503, {"Retry-After": "1"}, {"retry_after_s": 1}
            error = (f"overloaded (big_body): a body over {self.big.config.big_body_bytes} bytes cannot be read "
                     "and answered within the deadline its headers give (X-Request-Timeout-Ms, or the default)")
        body = error_body(scope.get("path", ""), status, error, detail=[{"loc": ["body"], "msg": error}], **extra)
        response = JSONResponse(body, status_code=status, headers=headers)
        await response({"type": "http"}, None, send)

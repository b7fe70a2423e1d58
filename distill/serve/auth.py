"""Who may call ``distill serve``: an API key checked on every endpoint but ``/healthz``, and a
warning when the server listens beyond this machine.

The key travels as ``Authorization: Bearer KEY``, the header Cohere's, TEI's and LiteLLM's
clients send; it is compared in constant time (:func:`hmac.compare_digest`), so the time of a
refusal says nothing about how much of a guess was right. A request without the right key is
answered 401 before its body is read. ``/healthz`` stays open for load balancers and probes.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable
from typing import Any

OPEN_PATHS = frozenset({"/healthz"})


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def bind_warning(host: str, api_key: str | None) -> str | None:
    """The warning to log when ``host`` is reachable from other machines (None for a loopback bind)."""
    if is_loopback(host):
        return None
    if api_key:
        return (f"listening on {host}: reachable from other machines; requests need the API key, but travel "
                "in clear text: put a TLS proxy in front")
    return (f"listening on {host}: reachable from other machines, and there is no API key, so anyone who can "
            "reach this port can use the server; pass --api-key (or set DISTILL_API_KEY) and put a TLS proxy "
            "in front")


def bearer_token(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The token of an ``Authorization: Bearer TOKEN`` header (the scheme in any case), else None."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" and token.strip() else None
    return None


class BearerAuth:
    """ASGI middleware: 401 (with ``WWW-Authenticate: Bearer``, in the shape of the path's API) for any
    request but to :data:`OPEN_PATHS` whose bearer token is not ``api_key``; ``on_reject("unauthorized")``
    counts it."""

    def __init__(self, app: Any, api_key: str, on_reject: Callable[[str], None] | None = None) -> None:
        self.app, self.key, self.on_reject = app, api_key.encode("utf-8"), on_reject

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        token = bearer_token(list(scope.get("headers") or []))
        if token is not None and hmac.compare_digest(token, self.key):
            await self.app(scope, receive, send)
            return
        from starlette.responses import JSONResponse

        from distill.serve.compat import error_body

        if self.on_reject is not None:
            self.on_reject("unauthorized")
        error = "unauthorized: send the API key as 'Authorization: Bearer KEY'"
        response = JSONResponse(error_body(scope.get("path", ""), 401, error), status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)

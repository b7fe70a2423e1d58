"""Decoding a big JSON request body on the event loop in steps, so other requests are served between them.

Parsing runs on the server's event loop (a thread would not help: parsing holds the GIL), and
one call on an 8 MB body of distinct texts blocks it for 10-40 ms (``json.loads``, or
pydantic-core's ``model_validate_json``), delaying ``/healthz`` and every other request that
long. :func:`decode_in_steps` decodes the top-level object key by key and the ``documents`` (or TEI's
``texts``) array element by element (each one a ``json`` C-scanner call), yielding to the loop after every
``STEP_CHARS`` characters; no step is longer than one document (at most ``max_document_chars``).
Invalid JSON raises :class:`json.JSONDecodeError` with its position; ``NaN`` and ``Infinity``
are refused, as strict JSON parsers refuse them.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

STEP_CHARS = 256 * 1024  # decoded between two yields to the event loop
STEPPED_KEYS = frozenset({"documents", "texts"})  # the arrays decoded element by element (native, TEI)
_SPACE = re.compile(r"[ \t\n\r]*")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def _skip(text: str, i: int) -> int:
    return _SPACE.match(text, i).end()


def _expect(text: str, i: int, allowed: str, what: str) -> str:
    if text[i:i + 1] not in tuple(allowed):
        raise json.JSONDecodeError(f"Expecting {what}", text, i)
    return text[i]


def _value(text: str, i: int) -> tuple[Any, int]:
    try:
        return _DECODER.raw_decode(text, i)
    except ValueError as err:
        if isinstance(err, json.JSONDecodeError):
            raise
        raise json.JSONDecodeError(str(err), text, i) from None


async def _array(text: str, i: int) -> tuple[list[Any], int]:
    """The array starting at ``text[i] == "["``, element by element, yielding every ``STEP_CHARS``."""
    out: list[Any] = []
    i = _skip(text, i + 1)
    if text[i:i + 1] == "]":
        return out, i + 1
    since_yield = i
    while True:
        value, i = _value(text, i)
        out.append(value)
        i = _skip(text, i)
        if _expect(text, i, ",]", "',' delimiter or ']'") == "]":
            return out, i + 1
        i = _skip(text, i + 1)
        if i - since_yield >= STEP_CHARS:
            await asyncio.sleep(0)
            since_yield = i


async def decode_in_steps(body: bytes) -> dict[str, Any] | None:
    """``json.loads(body)`` for a JSON object body, in steps (see the module docstring); None for a
    body that is not an object, undecoded (a request is an object: it is refused whatever it holds)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise json.JSONDecodeError(f"not UTF-8 ({err.reason})", "", err.start) from None
    i = _skip(text, 0)
    if text[i:i + 1] != "{":
        return None
    out: dict[str, Any] = {}
    i = _skip(text, i + 1)
    if text[i:i + 1] != "}":
        while True:
            _expect(text, i, '"', "property name enclosed in double quotes")
            key, i = _value(text, i)
            i = _skip(text, i)
            _expect(text, i, ":", "':' delimiter")
            i = _skip(text, i + 1)
            if key in STEPPED_KEYS and text[i:i + 1] == "[":
                out[key], i = await _array(text, i)
            else:
                out[key], i = _value(text, i)
            i = _skip(text, i)
            if _expect(text, i, ",}", "',' delimiter or '}'") == "}":
                break
            i = _skip(text, i + 1)
    i = _skip(text, i + 1)
    if i != len(text):
        raise json.JSONDecodeError("Extra data", text, i)
    return out

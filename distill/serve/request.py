"""The ``/rerank`` request of ``distill serve``: its pydantic model with the server's limits, parsed
straight from the body's bytes, and one line per validation error naming the field.

Parsing runs on the event loop, where every millisecond delays ``/healthz`` and every other
request: a body up to ``STEP_CHARS`` bytes is parsed and validated by pydantic-core in one pass
(``model_validate_json``); a bigger one is decoded in steps that yield to the loop
(:func:`distill.serve.stepwise_json.decode_in_steps`: one 8 MB call blocked it for 10-40 ms), then
validated (~2 ms for 1,000 documents). No ``from __future__ import annotations`` here: pydantic
resolves the models' annotations, which name ``config``'s limits.

A request model is also the shape of its API's answers: ``api`` (its label in the metrics),
``error_body`` (an error's JSON) and ``answer`` (a ranking's JSON and headers); the Cohere and TEI
models (:mod:`distill.serve.compat`) have the native one's ``query``, ``top_k``, ``deadline_ms`` and
``cascade_documents()``, so one parsing, admission and ranking path serves them all.
"""

import json
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from distill.serve.app import ServeConfig

# the deadline a client may send as a header, on every rerank endpoint (the tighter one wins over a body's)
DEADLINE_HEADER = "X-Request-Timeout-Ms"


def _not_blank(query: str) -> str:
    if not query.strip():
        raise ValueError("the query is blank")
    return query


def query_field(config: "ServeConfig") -> Any:
    """The type of a request's query: a string of 1..``max_query_chars`` characters, not blank."""
    from typing import Annotated

    from pydantic import AfterValidator, Field

    return Annotated[str, Field(min_length=1, max_length=config.max_query_chars), AfterValidator(_not_blank)]


def deadline_field(config: "ServeConfig") -> Any:
    """The type of a request's ``deadline_ms``: a number in (0, ``max_deadline_ms``], or None."""
    from typing import Annotated

    from pydantic import Field

    return Annotated[float, Field(gt=0, le=config.max_deadline_ms, allow_inf_nan=False)] | None


def as_object(value: Any, fields: str) -> Any:
    """A document as an object: a string is ``{"text": value}``; anything else but an object is refused."""
    if isinstance(value, str):
        return {"text": value}
    if not isinstance(value, dict):
        raise ValueError(f"a document is a string or an object {fields}")
    return value


def native_error(status: int, message: str, **extra: Any) -> dict[str, Any]:
    """The native API's error: ``{"error": message, ...extra}`` (``detail``, ``retry_after_s``)."""
    return {"error": message, **extra}


def request_model(config: "ServeConfig") -> type:
    """The ``/rerank`` body as a pydantic model with ``config``'s limits. A document is a string or
    ``{id?, title?, text?, score?}``; a string's id (and an object's without one) is its position.
    Without a text, the id must name a document of the served corpus (the cascade checks that).
    Types are strict (``"5"`` is not a ``top_k``)."""
    from typing import Annotated, ClassVar

    from pydantic import BaseModel, ConfigDict, Field, field_validator

    Document = _document_model(config)

    class RerankRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        api: ClassVar[str] = "native"
        error_body: ClassVar[Callable[..., dict[str, Any]]] = staticmethod(native_error)

        query: query_field(config)
        documents: Annotated[list[Document], Field(max_length=config.max_documents)]
        top_k: Annotated[int, Field(ge=1)] | None = None
        deadline_ms: deadline_field(config) = None

        @field_validator("documents")
        @classmethod
        def _consistent(cls, documents: list[Document]) -> list[Document]:
            seen: set[str] = set()
            with_score = bool(documents) and documents[0].score is not None
            for i, doc in enumerate(documents):
                doc_id = doc.id if doc.id is not None else str(i)
                if doc_id in seen:
                    raise ValueError(f"documents[{i}].id: duplicate id {doc_id!r}")
                seen.add(doc_id)
                if (doc.score is not None) != with_score:
                    raise ValueError(f"documents[{i}].score: give a score for every document or for none")
            return documents

        @property
        def min_score(self) -> None:
            """The native API drops no documents by relevance (the Cohere shape's extension does)."""
            return None

        def cascade_documents(self) -> list[dict[str, Any]]:
            """The documents as the cascade takes them: ``{id, title?, text?, score?}`` dicts."""
            return [{"id": str(i), **d.model_dump(exclude_none=True)} for i, d in enumerate(self.documents)]

        def answer(self, result: Any, report: dict[str, Any]) -> tuple[Any, dict[str, str] | None]:
            """``{results: [{id, score}], stages, degraded, deadline_ms, elapsed_ms}``: the final ranking's
            ids and scores (``n - rank + 1``) and ``report`` (what ran, the deadline, the time taken)."""
            results = [{"id": str(i), "score": float(s)} for i, s in zip(result.ids, result.scores)]
            return {"results": results, **report}, None

    return RerankRequest


def _document_model(config: "ServeConfig") -> type:
    """A ``/rerank`` document as a pydantic model with ``config``'s limits: a string or ``{id?, title?, text?,
    score?}``, strictly typed."""
    from typing import Annotated

    from pydantic import BaseModel, ConfigDict, Field, model_validator

    class Document(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)

        id: Annotated[str, Field(min_length=1, max_length=config.max_id_chars)] | None = None
        title: Annotated[str, Field(max_length=config.max_document_chars)] | None = None
        text: Annotated[str, Field(max_length=config.max_document_chars)] | None = None
        score: Annotated[float, Field(allow_inf_nan=False)] | None = None

        @model_validator(mode="before")
        @classmethod
        def _from_text(cls, value: Any) -> Any:
            return as_object(value, "{id?, title?, text?, score?}")

    return Document


def header_deadline(value: str | None, config: "ServeConfig") -> tuple[float | None, str | None]:
    """``(deadline_ms, None)`` from the :data:`DEADLINE_HEADER` header's ``value`` (None where it is
    absent), or ``(None, the 422 error)`` for one that is not a number in (0, ``max_deadline_ms``]."""
    if value is None:
        return None, None
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or not 0 < number <= config.max_deadline_ms:
        return None, (f"header {DEADLINE_HEADER}: expected milliseconds in (0, {config.max_deadline_ms:g}], "
                      f"got {value[:40]!r}")
    return number, None


def describe_error(error: dict[str, Any]) -> str:
    """One line naming the field of a pydantic/FastAPI validation error: ``documents[3].text: ...``."""
    loc = [part for part in error.get("loc", ()) if part != "body"]
    if error.get("type") == "json_invalid":
        reason = str((error.get("ctx") or {}).get("error", ""))
        return f"body: invalid JSON: {reason}".rstrip(": ")
    where = "body"
    if loc:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    message = str(error.get("msg", "invalid"))
    if message.startswith("Value error, "):  # our validators' messages may name a deeper field
        message = message.removeprefix("Value error, ")
        if ": " in message and message.split(": ", 1)[0].startswith(where + "["):
            return message
    return f"{where}: {message}"


class Alternative(NamedTuple):
    """A second body model on the same path, for a body object that has the key ``has`` and lacks
    ``lacks`` (TEI's ``texts`` beside the native ``documents``). The first model must forbid ``has``
    and require ``lacks``: its errors then say which body this is without decoding it again."""

    model: type
    has: str
    lacks: str

    def fits_keys(self, decoded: dict[str, Any]) -> bool:
        return self.has in decoded and self.lacks not in decoded

    def fits_errors(self, errors: list[Any]) -> bool:
        found = {(e["type"], tuple(e["loc"])) for e in errors}
        return {("extra_forbidden", (self.has,)), ("missing", (self.lacks,))} <= found


async def parse_request(model: type, body: bytes, expired: Callable[[Any], bool] | None = None,
                        alternative: Alternative | None = None) -> tuple[type, Any, dict[str, Any] | None]:
    """``(model, request, None)`` for a valid body, ``(model, None, the 422 answer)`` otherwise, where
    ``model`` is the one that judged the body (``alternative``'s for a body it fits); ``error`` names
    the field(s), ``detail`` lists pydantic's errors without echoing the input. ``expired(deadline_ms
    as sent)`` is asked between decoding a big body and validating it: True stops there with
    ``(model, None, None)`` (the request is to be shed; validating it would be work thrown away)."""
    from pydantic import ValidationError

    from distill.serve.stepwise_json import STEP_CHARS, decode_in_steps

    try:
        if not body.strip():
            errors = [{"type": "missing", "loc": ["body"], "msg": "Field required"}]
        elif len(body) <= STEP_CHARS:
            try:
                return model, model.model_validate_json(body), None
            except ValidationError as exc:
                if alternative is None or not alternative.fits_errors(exc.errors()):
                    raise
            model = alternative.model
            return model, model.model_validate_json(body), None
        elif (decoded := await decode_in_steps(body)) is None:
            errors = [{"type": "model_type", "loc": [], "msg": "Input should be an object"}]
        else:
            model = alternative.model if alternative is not None and alternative.fits_keys(decoded) else model
            if expired is not None and expired(decoded.get("deadline_ms")):
                return model, None, None
            return model, model.model_validate(decoded), None
    except ValidationError as exc:
        errors = [{k: v for k, v in e.items() if k in ("type", "loc", "msg", "ctx")} for e in exc.errors()]
    except json.JSONDecodeError as err:
        errors = [{"type": "json_invalid", "loc": [], "msg": "Invalid JSON",
                   "ctx": {"error": f"{err.msg} at character {err.pos}"}}]
    lines = [describe_error(e) for e in errors]
    detail = [{k: (list(v) if k == "loc" else v) for k, v in e.items() if k != "ctx"} for e in errors[:20]]
    return model, None, {"error": "; ".join(lines[:5]), "detail": detail}


def openapi_body(model: type, path: str = "/rerank") -> dict[str, Any]:
    """The request body of ``model`` at ``path`` for ``openapi_extra`` (the endpoint parses the body itself)."""
    pointer = f"#/paths/{path.replace('/', '~1')}/post/requestBody/content/application~1json/schema/$defs/{{model}}"
    schema = model.model_json_schema(ref_template=pointer)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}

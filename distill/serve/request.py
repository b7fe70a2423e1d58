"""The ``/rerank`` request of ``distill serve``: its pydantic model with the server's limits, parsed
straight from the body's bytes, and one line per validation error naming the field.

Parsing runs on the event loop, where every millisecond delays ``/healthz`` and every other
request: a body up to ``STEP_CHARS`` bytes is parsed and validated by pydantic-core in one pass
(``model_validate_json``); a bigger one is decoded in steps that yield to the loop
(:func:`distill.serve.stepwise_json.decode_in_steps`: one 8 MB call blocked it for 10-40 ms), then
validated (~2 ms for 1,000 documents). No ``from __future__ import annotations`` here: pydantic
resolves the models' annotations, which name ``config``'s limits.
"""

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distill.serve.app import ServeConfig

def request_model(config: "ServeConfig") -> type:
    """The ``/rerank`` body as a pydantic model with ``config``'s limits. A document is a string or
    ``{id?, title?, text?, score?}``; a string's id (and an object's without one) is its position.
    Without a text, the id must name a document of the served corpus (the cascade checks that).
    Types are strict (``"5"`` is not a ``top_k``)."""
    from typing import Annotated

    from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

    class Document(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)

        id: Annotated[str, Field(min_length=1, max_length=config.max_id_chars)] | None = None
        title: Annotated[str, Field(max_length=config.max_document_chars)] | None = None
        text: Annotated[str, Field(max_length=config.max_document_chars)] | None = None
        score: Annotated[float, Field(allow_inf_nan=False)] | None = None

        @model_validator(mode="before")
        @classmethod
        def _from_text(cls, value: Any) -> Any:
            if isinstance(value, str):
                return {"text": value}
            if not isinstance(value, dict):
                raise ValueError("a document is a string or an object {id?, title?, text?, score?}")
            return value

    class RerankRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)

        query: Annotated[str, Field(min_length=1, max_length=config.max_query_chars)]
        documents: Annotated[list[Document], Field(max_length=config.max_documents)]
        top_k: Annotated[int, Field(ge=1)] | None = None
        deadline_ms: Annotated[float, Field(gt=0, le=config.max_deadline_ms, allow_inf_nan=False)] | None = None

        @field_validator("query")
        @classmethod
        def _not_blank(cls, query: str) -> str:
            if not query.strip():
                raise ValueError("the query is blank")
            return query

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

        def cascade_documents(self) -> list[dict[str, Any]]:
            """The documents as the cascade takes them: ``{id, title?, text?, score?}`` dicts."""
            return [{"id": str(i), **d.model_dump(exclude_none=True)} for i, d in enumerate(self.documents)]

    return RerankRequest


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


async def parse_request(model: type, body: bytes, expired: Callable[[Any], bool] | None = None
                        ) -> tuple[Any, dict[str, Any] | None]:
    """``(request, None)`` for a valid body, ``(None, the 422 answer)`` otherwise: ``error`` names
    the field(s), ``detail`` lists pydantic's errors without echoing the input. ``expired(deadline_ms
    as sent)`` is asked between decoding a big body and validating it: True stops there with
    ``(None, None)`` (the request is to be shed; validating it would be work thrown away)."""
    from pydantic import ValidationError

    from distill.serve.stepwise_json import STEP_CHARS, decode_in_steps

    try:
        if not body.strip():
            errors = [{"type": "missing", "loc": ["body"], "msg": "Field required"}]
        elif len(body) <= STEP_CHARS:
            return model.model_validate_json(body), None
        elif (decoded := await decode_in_steps(body)) is None:
            errors = [{"type": "model_type", "loc": [], "msg": "Input should be an object"}]
        elif expired is not None and expired(decoded.get("deadline_ms")):
            return None, None
        else:
            return model.model_validate(decoded), None
    except ValidationError as exc:
        errors = [{k: v for k, v in e.items() if k in ("type", "loc", "msg", "ctx")} for e in exc.errors()]
    except json.JSONDecodeError as err:
        errors = [{"type": "json_invalid", "loc": [], "msg": "Invalid JSON",
                   "ctx": {"error": f"{err.msg} at character {err.pos}"}}]
    lines = [describe_error(e) for e in errors]
    detail = [{k: (list(v) if k == "loc" else v) for k, v in e.items() if k != "ctx"} for e in errors[:20]]
    return None, {"error": "; ".join(lines[:5]), "detail": detail}


def openapi_body(model: type) -> dict[str, Any]:
    """The request body of ``model`` for ``openapi_extra`` (the endpoint parses the body itself)."""
    pointer = "#/paths/~1rerank/post/requestBody/content/application~1json/schema/$defs/{model}"
    schema = model.model_json_schema(ref_template=pointer)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}

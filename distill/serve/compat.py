"""The standard rerank APIs of ``distill serve``: Cohere's (and Jina's) at ``POST /v1/rerank`` and
``POST /v2/rerank``, Text Embeddings Inference's at ``POST /rerank`` beside the native body.

Each API is a request model with the native one's interface (:mod:`distill.serve.request`): the
server parses, admits, ranks and sheds every request on one path, and the model maps it to the
cascade (``query``, ``top_k``, ``deadline_ms``, ``cascade_documents()``) and writes the answer
(``answer``) and the errors (``error_body``) in its API's shape.

- **Cohere / Jina**: ``{model?, query, documents: [str | {text, ...}], top_n?, return_documents?,
  rank_fields?, max_tokens_per_doc?, max_chunks_per_doc?, priority?, relevant_spans?, deadline_ms?}``
  → ``{id, results: [{index, relevance_score, document?}], meta}``. Any ``model`` name is accepted
  (the server serves one cascade). ``rank_fields`` names the string fields of object documents that
  are ranked, joined by a newline in that order (default ``["text"]``); the other fields of an object
  are returned as sent with ``return_documents`` (default false; a string comes back as
  ``{"text": ...}``). ``max_tokens_per_doc``, ``max_chunks_per_doc``, ``priority`` and
  ``relevant_spans`` are accepted and ignored: each stage's model truncates a document to its own
  ``max_length``, nothing is chunked, requests are admitted in arrival order, no spans are returned.
  ``meta`` holds ``api_version`` and the native answer's ``stages``, ``degraded``, ``deadline_ms`` and
  ``elapsed_ms``. Errors are Cohere's ``{id, message}`` (the SDK raises its error for the status with
  this body).
- **TEI**: ``{query, texts: [str], return_text?, raw_scores?, truncate?, truncation_direction?,
  deadline_ms?}`` → ``[{index, score, text?}]``, best first; told apart from the native body by its
  ``texts`` (and no ``documents``). ``truncate`` and ``truncation_direction`` are accepted and ignored
  (the models truncate). The stages go in the headers ``X-Distill-Degraded`` and ``X-Distill-Stages``
  (``name=ran`` or ``name=skipped``, comma-separated). Errors are TEI's ``{error, error_type}``.

Scores: ``relevance_score`` (TEI's ``score``) is the cascade's relevance of the document, its
probability of relevance in [0, 1] (:attr:`distill.cascade.runtime.RankResult.relevance`: the
calibration ``cascade build`` fitted for the last stage that scored it, or a documented sigmoid for
an uncalibrated stage). ``min_score`` (an extension of the Cohere body) drops documents whose
relevance is below it. TEI's ``raw_scores: true`` returns the cascade's final score itself
(``n - rank + 1``, as offline).

Deadline: ``deadline_ms`` in the body (an extension of both APIs) or the ``X-Request-Timeout-Ms``
header, the tighter where both are sent, the server's default otherwise.
"""

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from distill.serve.request import as_object, deadline_field, native_error, query_field

if TYPE_CHECKING:
    from distill.serve.app import ServeConfig

COHERE_PATHS = {"/v1/rerank": 1, "/v2/rerank": 2}  # path -> Cohere API version
TEI_ERROR_TYPES = {413: "Validation", 422: "Validation", 503: "Overloaded"}  # by status; others: Backend


def cohere_error(status: int, message: str, **extra: Any) -> dict[str, Any]:
    """Cohere's error body: ``{id, message}`` (``extra``, the native body's details, is left out)."""
    return {"id": str(uuid.uuid4()), "message": message}


def tei_error(status: int, message: str, **extra: Any) -> dict[str, Any]:
    """TEI's error body: ``{error, error_type, ...extra}`` (Validation, Overloaded or Backend)."""
    return {"error": message, "error_type": TEI_ERROR_TYPES.get(status, "Backend"), **extra}


def error_body(path: str, status: int, message: str, **extra: Any) -> dict[str, Any]:
    """The error body for a request to ``path`` refused before it is parsed (401, 413): Cohere's on
    :data:`COHERE_PATHS`, the native one elsewhere (a TEI client at ``/rerank`` gets its ``error``)."""
    shape = cohere_error if path in COHERE_PATHS else native_error
    return shape(status, message, **extra)


def _ranked_text(i: int, doc: dict[str, Any], fields: list[str], max_chars: int) -> None:
    """Refuse document ``i`` unless each of ``fields`` is a string of at most ``max_chars`` characters."""
    for name in fields:
        value = doc.get(name)
        if name not in doc:
            raise ValueError(f"documents[{i}].{name}: Field required")
        if not isinstance(value, str):
            raise ValueError(f"documents[{i}].{name}: Input should be a valid string")
        if len(value) > max_chars:
            raise ValueError(f"documents[{i}].{name}: String should have at most {max_chars} characters")


def cohere_model(config: "ServeConfig", version: int) -> type:
    """The body of Cohere's ``POST /v{version}/rerank`` with ``config``'s limits (module docstring).
    Unknown fields are refused, as in the native body; types are strict."""
    from typing import Annotated

    from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

    class CohereRerankRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        api: ClassVar[str] = f"cohere-v{version}"
        error_body: ClassVar[Callable[..., dict[str, Any]]] = staticmethod(cohere_error)

        model: str | None = None
        query: query_field(config)
        rank_fields: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] | None = None
        documents: Annotated[list[Any], Field(max_length=config.max_documents)]
        top_n: Annotated[int, Field(ge=1)] | None = None
        min_score: Annotated[float, Field(ge=0.0, le=1.0)] | None = None  # an extension: see the module docstring
        return_documents: bool | None = None
        max_tokens_per_doc: Annotated[int, Field(ge=1)] | None = None
        max_chunks_per_doc: Annotated[int, Field(ge=1)] | None = None
        priority: int | None = None
        relevant_spans: Any = None
        deadline_ms: deadline_field(config) = None

        @field_validator("documents")
        @classmethod
        def _objects(cls, documents: list[Any], info: ValidationInfo) -> list[dict[str, Any]]:
            fields = info.data.get("rank_fields") or ["text"]
            out = []
            for i, value in enumerate(documents):
                try:
                    doc = as_object(value, "{text, ...}")
                except ValueError as err:
                    raise ValueError(f"documents[{i}]: {err}") from None
                _ranked_text(i, doc, fields, config.max_document_chars)
                out.append(doc)
            return out

        @property
        def top_k(self) -> int | None:
            return self.top_n

        def cascade_documents(self) -> list[dict[str, Any]]:
            """Each document's ranked fields as the cascade's ``{id: position, text}``."""
            fields = self.rank_fields or ["text"]
            return [{"id": str(i), "text": "\n".join(d[f] for f in fields)} for i, d in enumerate(self.documents)]

        def answer(self, result: Any, report: dict[str, Any]) -> tuple[Any, dict[str, str] | None]:
            """``{id, results: [{index, relevance_score, document?}], meta}`` (module docstring)."""
            results = []
            for doc_id, relevance in zip(result.ids, result.relevance):
                item: dict[str, Any] = {"index": int(doc_id), "relevance_score": float(relevance)}
                if self.return_documents:
                    item["document"] = self.documents[int(doc_id)]
                results.append(item)
            meta = {"api_version": {"version": str(version)}, **report}
            return {"id": str(uuid.uuid4()), "results": results, "meta": meta}, None

    return CohereRerankRequest


def stages_header(stages: list[dict[str, Any]]) -> dict[str, str]:
    """The headers that say what ran where the body cannot (TEI's answer is a bare list)."""
    return {"X-Distill-Degraded": "true" if any(not s["ran"] for s in stages) else "false",
            "X-Distill-Stages": ", ".join(f"{s['name']}={'ran' if s['ran'] else 'skipped'}" for s in stages)}


def tei_model(config: "ServeConfig") -> type:
    """The body of TEI's ``POST /rerank`` with ``config``'s limits (module docstring)."""
    from typing import Annotated, Literal

    from pydantic import BaseModel, ConfigDict, Field

    class TeiRerankRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        api: ClassVar[str] = "tei"
        error_body: ClassVar[Callable[..., dict[str, Any]]] = staticmethod(tei_error)

        query: query_field(config)
        texts: Annotated[list[Annotated[str, Field(max_length=config.max_document_chars)]],
                         Field(max_length=config.max_documents)]
        return_text: bool = False
        raw_scores: bool = False
        truncate: bool | None = None
        truncation_direction: Literal["left", "right", "Left", "Right"] | None = None
        deadline_ms: deadline_field(config) = None

        @property
        def top_k(self) -> None:
            return None

        @property
        def min_score(self) -> None:
            return None

        def cascade_documents(self) -> list[dict[str, Any]]:
            return [{"id": str(i), "text": text} for i, text in enumerate(self.texts)]

        def answer(self, result: Any, report: dict[str, Any]) -> tuple[Any, dict[str, str] | None]:
            """``[{index, score, text?}]`` best first: the relevance, or with ``raw_scores`` the
            cascade's final score (module docstring)."""
            out = []
            for doc_id, score, relevance in zip(result.ids, result.scores, result.relevance):
                item: dict[str, Any] = {"index": int(doc_id), "score": float(score if self.raw_scores else relevance)}
                if self.return_text:
                    item["text"] = self.texts[int(doc_id)]
                out.append(item)
            return out, stages_header(report["stages"])

    return TeiRerankRequest

"""``distill serve`` refusing what it cannot serve: bad requests get 422 naming the field, a failing cascade
gets 500 or 422 and leaves the server up, and bad settings are refused before it starts. The cascade is
tests/test_serve.py's :class:`Fake`."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
from test_serve import DOCS, Fake, client  # noqa: E402

from distill.core.errors import ConfigError  # noqa: E402
from distill.serve.app import ServeConfig  # noqa: E402

BAD = [
    ("malformed JSON", b'{"query": "x", "documents": [', "body: invalid JSON"),
    ("not an object", b'["x"]', "body: Input should be an object"),
    ("empty body", b"", "body: Field required"),
    ("missing query", {"documents": DOCS}, "query: Field required"),
    ("missing documents", {"query": "x"}, "documents: Field required"),
    ("empty query", {"query": "", "documents": DOCS}, "query: String should have at least 1 character"),
    ("blank query", {"query": "   ", "documents": DOCS}, "query: the query is blank"),
    ("query too long", {"query": "q" * 101, "documents": DOCS}, "query: String should have at most 100"),
    ("query not a string", {"query": 5, "documents": DOCS}, "query: Input should be a valid string"),
    ("too many documents", {"query": "x", "documents": ["d"] * 6}, "documents: List should have at most 5"),
    ("document too long", {"query": "x", "documents": ["ok", "d" * 51]},
     "documents[1].text: String should have at most 50"),
    ("document not text", {"query": "x", "documents": ["ok", 7]}, "documents[1]: a document is"),
    ("document text not a string", {"query": "x", "documents": [{"id": "a", "text": 3}]},
     "documents[0].text: Input should be a valid string"),
    ("unknown document field", {"query": "x", "documents": [{"text": "a", "url": "u"}]},
     "documents[0].url: Extra inputs are not permitted"),
    ("duplicate ids", {"query": "x", "documents": [{"id": "a", "text": "1"}, {"id": "a", "text": "2"}]},
     "documents[1].id: duplicate id 'a'"),
    ("scores for some", {"query": "x", "documents": [{"text": "1", "score": 1.0}, {"text": "2"}]},
     "documents[1].score: give a score for every document or for none"),
    ("score not a number", {"query": "x", "documents": [{"text": "1", "score": "high"}]},
     "documents[0].score: Input should be a valid number"),
    ("top_k zero", {"query": "x", "documents": DOCS, "top_k": 0}, "top_k: Input should be greater than or equal to 1"),
    ("top_k a string", {"query": "x", "documents": DOCS, "top_k": "5"}, "top_k: Input should be a valid integer"),
    ("top_k a float", {"query": "x", "documents": DOCS, "top_k": 2.5}, "top_k: Input should be a valid integer"),
    ("negative deadline", {"query": "x", "documents": DOCS, "deadline_ms": -1}, "deadline_ms: Input should be greater"),
    ("deadline too long", {"query": "x", "documents": DOCS, "deadline_ms": 1e9}, "deadline_ms: Input should be less"),
    ("deadline a bool", {"query": "x", "documents": DOCS, "deadline_ms": True}, "deadline_ms: Input should be a valid"),
    ("unknown field", {"query": "x", "documents": DOCS, "topk": 3}, "topk: Extra inputs are not permitted"),
]


@pytest.mark.parametrize("payload, message", [(p, m) for _, p, m in BAD], ids=[k for k, _, _ in BAD])
def test_bad_requests_get_422_naming_the_field(payload, message):
    fake = Fake()
    with client(fake, max_documents=5, max_document_chars=50, max_query_chars=100) as c:
        if isinstance(payload, bytes):
            r = c.post("/rerank", content=payload, headers={"content-type": "application/json"})
        else:
            r = c.post("/rerank", json=payload)
        assert r.status_code == 422, r.text
        assert r.json()["error"].startswith(message), r.json()["error"]
        assert all("input" not in e for e in r.json()["detail"])  # the request is not echoed back
        assert c.get("/healthz").status_code == 200  # the server is still up
        assert 'distill_requests_total{outcome="invalid"} 1.0' in c.get("/metrics").text
    assert fake.calls == []


def test_errors_in_the_cascade_do_not_crash_the_server():
    with client() as c:
        r = c.post("/rerank", json={"query": "x", "documents": ["boom"]})
        assert r.status_code == 500 and "internal error" in r.json()["error"]
        r = c.post("/rerank", json={"query": "x", "documents": ["bad"]})
        assert r.status_code == 422 and r.json()["error"].startswith("documents: ")
        assert c.post("/rerank", json={"query": "x", "documents": DOCS}).status_code == 200
        assert 'distill_requests_total{outcome="error"} 1.0' in c.get("/metrics").text


@pytest.mark.parametrize("bad", [{"workers": 0}, {"port": 70000}, {"deadline_ms": float("nan")},
                                 {"margin_ms": 200.0}, {"deadline_ms": 10.0, "max_deadline_ms": 5.0},
                                 {"queue_size": True}, {"host": ""}, {"threads": 0}])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ConfigError):
        ServeConfig(**bad)


def test_binds_loopback_by_default():
    assert ServeConfig().host == "127.0.0.1"

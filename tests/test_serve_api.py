"""``distill serve``'s standard rerank APIs: Cohere's (and Jina's) at ``/v1/rerank`` and ``/v2/rerank``
called through the official ``cohere`` SDK on a live server, Text Embeddings Inference's at ``/rerank``
through httpx, and every protection of the native endpoint applied to them (413, 401, 422 naming
the field, shedding with 503 and Retry-After, the deadline header, big bodies decoded in steps,
metrics by outcome).

The server ranks :class:`test_serve.Fake` under a frozen clock, as the native tests do, so no
assertion depends on timing.
"""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from test_serve import DOCS, FROZEN, Fake, client, wait_for  # noqa: E402
from test_serve_trust import Late, half_sent, live, read_all  # noqa: E402

from distill.serve.app import ServeConfig, create_app  # noqa: E402

KEY = "s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}
QUERY = "river rain lake"  # Fake's second stage ranks DOCS 2, 1, 0 for it


@pytest.fixture(scope="module")
def server():
    """A live server with an API key; the overlap stage (50 ms modelled) runs under the default
    100 ms deadline and is skipped under 20 ms."""
    config = ServeConfig(api_key=KEY)
    app = create_app(Fake(costs=(0.0, 50.0)), config, clock=FROZEN)
    with live(app, config) as (port, _):
        yield f"http://127.0.0.1:{port}", app


def sample(app, name: str, **labels: str) -> float:
    return app.state.metrics.registry.get_sample_value(name, labels) or 0.0


# -- Cohere, through its SDK ------------------------------------------------------------------------


def test_the_cohere_sdk_reranks_through_v1_and_v2(server):
    cohere = pytest.importorskip("cohere")
    base, _ = server
    v1 = cohere.Client(api_key=KEY, base_url=base)
    r = v1.rerank(model="rerank-english-v3.0", query=QUERY, documents=DOCS, top_n=2, return_documents=True,
                  max_chunks_per_doc=10)
    assert [(x.index, x.relevance_score, x.document.text) for x in r.results] == [
        (2, pytest.approx(3 / 4), DOCS[2]), (1, pytest.approx(2 / 3), DOCS[1])]  # the cascade's relevance
    assert r.id and r.meta.api_version.version == "1"
    assert r.meta.degraded is False and [(s["name"], s["ran"]) for s in r.meta.stages] == [
        ("first", True), ("overlap", True)]

    v2 = cohere.ClientV2(api_key=KEY, base_url=base)
    r = v2.rerank(model="any-name-at-all", query=QUERY, documents=DOCS, max_tokens_per_doc=512,
                  request_options={"additional_body_parameters": {"priority": 3}})  # newer SDKs send it
    assert [x.index for x in r.results] == [2, 1, 0]
    assert all(0.0 <= x.relevance_score <= 1.0 for x in r.results)
    assert r.meta.api_version.version == "2" and r.meta.degraded is False
    assert all(getattr(x, "document", None) is None for x in r.results)  # return_documents defaults to false


def test_the_cohere_sdk_sees_degradation_and_the_deadline_header_and_field(server):
    cohere = pytest.importorskip("cohere")
    base, app = server
    v2 = cohere.ClientV2(api_key=KEY, base_url=base)
    tight = v2.rerank(model="m", query=QUERY, documents=DOCS,
                      request_options={"additional_headers": {"X-Request-Timeout-Ms": "20"}})
    assert tight.meta.degraded is True and tight.meta.deadline_ms == 20.0
    assert tight.meta.stages[1]["ran"] is False and tight.meta.stages[1]["skipped"] == "deadline"
    assert [x.index for x in tight.results] == [0, 1, 2]  # the first stage's order
    field = v2.rerank(model="m", query=QUERY, documents=DOCS,
                      request_options={"additional_body_parameters": {"deadline_ms": 20}})
    assert field.meta.degraded is True
    both = v2.rerank(model="m", query=QUERY, documents=DOCS,
                     request_options={"additional_body_parameters": {"deadline_ms": 500},
                                      "additional_headers": {"X-Request-Timeout-Ms": "20"}})
    assert both.meta.deadline_ms == 20.0  # the tighter one
    assert sample(app, "distill_api_requests_total", api="cohere-v2", outcome="degraded") >= 3


def test_the_cohere_sdk_raises_its_errors_with_their_messages(server):
    cohere = pytest.importorskip("cohere")
    from cohere.core.api_error import ApiError

    base, app = server
    v2 = cohere.ClientV2(api_key=KEY, base_url=base)
    once = {"max_retries": 0}
    with pytest.raises(cohere.UnprocessableEntityError) as err:
        v2.rerank(model="m", query="   ", documents=DOCS, request_options=once)
    assert err.value.body["message"] == "query: the query is blank" and err.value.body["id"]
    with pytest.raises(cohere.UnprocessableEntityError) as err:
        v2.rerank(model="m", query=QUERY, documents=DOCS, top_n=0, request_options=once)
    assert err.value.body["message"].startswith("top_n: Input should be greater than or equal to 1")
    with pytest.raises(cohere.ServiceUnavailableError) as err:  # even the first stage misses 1 ms
        v2.rerank(model="m", query=QUERY, documents=DOCS,
                  request_options={"max_retries": 0, "additional_headers": {"X-Request-Timeout-Ms": "1"}})
    assert "overloaded (deadline)" in err.value.body["message"] and err.value.headers["retry-after"] == "1"
    with pytest.raises(cohere.InternalServerError) as err:
        v2.rerank(model="m", query=QUERY, documents=["boom"], request_options=once)
    assert "internal error" in err.value.body["message"]
    with pytest.raises(cohere.UnauthorizedError) as err:
        cohere.ClientV2(api_key="wrong", base_url=base).rerank(model="m", query=QUERY, documents=DOCS)
    assert err.value.body["message"].startswith("unauthorized")
    assert issubclass(cohere.UnauthorizedError, ApiError)
    assert sample(app, "distill_api_requests_total", api="cohere-v2", outcome="invalid") >= 2
    assert sample(app, "distill_shed_total", reason="deadline") >= 1


# -- TEI, through httpx ----------------------------------------------------------------------------------


def test_tei_and_native_bodies_share_rerank(server):
    import httpx

    base, app = server
    with httpx.Client(base_url=base, headers=AUTH, timeout=30) as http:
        tei = http.post("/rerank", json={"query": QUERY, "texts": DOCS, "return_text": True, "truncate": True})
        raw = http.post("/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True})
        degraded = http.post("/rerank", json={"query": QUERY, "texts": DOCS}, headers={"X-Request-Timeout-Ms": "20"})
        native = http.post("/rerank", json={"query": QUERY, "documents": DOCS})
        bad = http.post("/rerank", json={"query": QUERY, "texts": ["ok", 5]})
    assert tei.status_code == 200, tei.text
    assert tei.json() == [{"index": 2, "score": 0.75, "text": DOCS[2]},
                          {"index": 1, "score": pytest.approx(2 / 3), "text": DOCS[1]},
                          {"index": 0, "score": 0.0, "text": DOCS[0]}]  # the cascade's relevance
    assert tei.headers["X-Distill-Degraded"] == "false"
    assert tei.headers["X-Distill-Stages"] == "first=ran, overlap=ran"
    assert [(x["index"], x["score"]) for x in raw.json()] == [(2, 3.0), (1, 2.0), (0, 0.0)]  # the cascade's own
    assert degraded.headers["X-Distill-Degraded"] == "true"
    assert degraded.headers["X-Distill-Stages"] == "first=ran, overlap=skipped"
    assert [x["index"] for x in degraded.json()] == [0, 1, 2]
    assert set(native.json()) == {"results", "stages", "degraded", "deadline_ms", "elapsed_ms"}  # unchanged
    assert "X-Distill-Degraded" not in native.headers
    assert bad.status_code == 422
    assert bad.json()["error"] == "texts[1]: Input should be a valid string"
    assert bad.json()["error_type"] == "Validation"
    assert sample(app, "distill_api_requests_total", api="tei", outcome="ok") >= 2


def test_a_standard_request_not_received_in_time_gets_408():
    config = ServeConfig(request_timeout_s=0.3)
    app = create_app(Fake(), config, clock=FROZEN)
    with live(app, config) as (port, _):
        body = b'{"model": "m", "query": "rain", "documents": ["a"]}'
        stalled = half_sent(port, b"POST /v2/rerank HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                            b"content-length: %d\r\n\r\n" % len(body) + body[:10])  # body never finished
        assert read_all(stalled).startswith(b"HTTP/1.1 408")
    assert app.state.metrics.registry.get_sample_value("distill_dropped_connections_total",
                                                       {"reason": "request_timeout"}) == 1


# -- the protections, under the test client -------------------------------------------------------------

COHERE_BAD = [
    ("missing query", {"documents": DOCS}, "query: Field required"),
    ("missing documents", {"query": "x"}, "documents: Field required"),
    ("document not text", {"query": "x", "documents": ["ok", 7]}, "documents[1]: a document is a string or an"),
    ("object without text", {"query": "x", "documents": [{"title": "t"}]}, "documents[0].text: Field required"),
    ("rank field not a string", {"query": "x", "rank_fields": ["title"], "documents": [{"title": 5}]},
     "documents[0].title: Input should be a valid string"),
    ("document too long", {"query": "x", "documents": ["ok", "d" * 51]},
     "documents[1].text: String should have at most 50 characters"),
    ("too many documents", {"query": "x", "documents": ["d"] * 6}, "documents: List should have at most 5"),
    ("top_n a string", {"query": "x", "documents": DOCS, "top_n": "2"}, "top_n: Input should be a valid integer"),
    ("return_documents not a bool", {"query": "x", "documents": DOCS, "return_documents": "yes"},
     "return_documents: Input should be a valid boolean"),
    ("deadline too long", {"query": "x", "documents": DOCS, "deadline_ms": 1e9}, "deadline_ms: Input should be less"),
    ("unknown field", {"query": "x", "documents": DOCS, "topk": 3}, "topk: Extra inputs are not permitted"),
    ("malformed JSON", b'{"query": "x", "documents": [', "body: invalid JSON"),
]


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank"])
@pytest.mark.parametrize("payload, message", [(p, m) for _, p, m in COHERE_BAD], ids=[k for k, _, _ in COHERE_BAD])
def test_bad_cohere_requests_get_422_naming_the_field_in_cohere_shape(path, payload, message):
    fake = Fake()
    with client(fake, max_documents=5, max_document_chars=50) as c:
        if isinstance(payload, bytes):
            r = c.post(path, content=payload, headers={"content-type": "application/json"})
        else:
            r = c.post(path, json=payload)
        metrics = c.get("/metrics").text
    assert r.status_code == 422, r.text
    assert set(r.json()) == {"id", "message"} and r.json()["message"].startswith(message), r.json()
    assert f'distill_api_requests_total{{api="cohere-v{path[2]}",outcome="invalid"}} 1.0' in metrics
    assert 'distill_requests_total{outcome="invalid"} 1.0' in metrics
    assert fake.calls == []


def test_relevance_scores_are_the_cascade_s_and_min_score_drops_the_rest():
    """relevance_score (TEI's score) is the cascade's relevance of each document, not a rank rule;
    the Cohere body's min_score extension reaches the cascade, which drops what falls below it."""
    with client(Fake()) as c:
        kept = c.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "min_score": 0.7})
        everything = c.post("/v2/rerank", json={"query": QUERY, "documents": DOCS})
        tei = c.post("/rerank", json={"query": QUERY, "texts": DOCS})
        raw = c.post("/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True})
    assert [(x["index"], x["relevance_score"]) for x in kept.json()["results"]] == [(2, 0.75)]
    assert [(x["index"], x["relevance_score"]) for x in everything.json()["results"]] == [
        (2, 0.75), (1, pytest.approx(2 / 3)), (0, 0.0)]
    assert [x["score"] for x in tei.json()] == [0.75, pytest.approx(2 / 3), 0.0]
    assert [x["score"] for x in raw.json()] == [3.0, 2.0, 0.0]  # Fake's final scores: its overlap counts


def test_rank_fields_choose_what_is_ranked_and_objects_come_back_whole():
    fake = Fake()
    docs = [{"title": "plums", "text": "pears", "url": "a"}, {"title": "river", "text": "rain", "url": "b"}]
    with client(fake) as c:
        r = c.post("/v1/rerank", json={"query": "river rain", "documents": docs, "rank_fields": ["title", "text"],
                                       "return_documents": True, "model": "jina-reranker-v2-base-multilingual"})
    assert r.status_code == 200, r.text
    assert [x["document"] for x in r.json()["results"]] == [docs[1], docs[0]]
    assert fake.calls[0]["documents"] == [{"id": "0", "text": "plums\npears"}, {"id": "1", "text": "river\nrain"}]


@pytest.mark.parametrize("value", ["soon", "0", "-5", "nan", "1e9"])
def test_a_bad_deadline_header_gets_422_naming_it(value):
    fake = Fake()
    with client(fake) as c:
        cohere = c.post("/v2/rerank", json={"query": "x", "documents": DOCS}, headers={"X-Request-Timeout-Ms": value})
        tei = c.post("/rerank", json={"query": "x", "texts": DOCS}, headers={"X-Request-Timeout-Ms": value})
    assert cohere.status_code == 422 and cohere.json()["message"].startswith("header X-Request-Timeout-Ms: ")
    assert tei.status_code == 422 and tei.json()["error"].startswith("header X-Request-Timeout-Ms: ")
    assert fake.calls == []


def test_the_body_limit_and_the_api_key_answer_in_the_path_s_shape():
    with client(max_body_bytes=1000) as c:
        big = {"query": "x", "documents": ["d" * 2000]}
        cohere = c.post("/v1/rerank", json=big)
        tei = c.post("/rerank", json={"query": "x", "texts": ["d" * 2000]})
        metrics = c.get("/metrics").text
    assert cohere.status_code == 413 and "1000 bytes" in cohere.json()["message"]
    assert tei.status_code == 413 and "1000 bytes" in tei.json()["error"]
    assert 'distill_rejected_total{reason="too_large"} 2.0' in metrics
    with client(api_key=KEY) as c:
        denied = c.post("/v2/rerank", json={"query": "x", "documents": DOCS})
        assert c.post("/v2/rerank", json={"query": "x", "documents": DOCS}, headers=AUTH).status_code == 200
    assert denied.status_code == 401 and denied.json()["message"].startswith("unauthorized")


def test_a_full_queue_sheds_cohere_and_tei_requests_before_parsing():
    gate = threading.Event()
    fake = Fake(gate=gate)
    app = create_app(fake, ServeConfig(queue_size=1), clock=FROZEN)
    answers: list = []
    with TestClient(app) as c:
        threads = [threading.Thread(target=lambda: answers.append(c.post("/v2/rerank", json={
            "query": "a", "documents": DOCS}))) for _ in range(2)]
        threads[0].start()
        assert fake.entered.acquire(timeout=30)
        threads[1].start()
        wait_for(lambda: app.state.dispatcher.queued == 1, "a queued request")
        cohere = c.post("/v1/rerank", content=b'{"query": "x", "documents": [',
                        headers={"content-type": "application/json"})
        tei = c.post("/rerank", json={"query": "x", "texts": DOCS})
        gate.set()
        for t in threads:
            t.join(timeout=30)
        metrics = c.get("/metrics").text
    assert cohere.status_code == 503 and "queue_full" in cohere.json()["message"]  # not parsed: no 422
    assert cohere.headers["Retry-After"] == "1"
    assert tei.status_code == 503 and "queue_full" in tei.json()["error"]
    assert [a.status_code for a in answers] == [200, 200]
    assert 'distill_shed_total{reason="queue_full"} 2.0' in metrics


def test_the_deadline_sheds_and_skips_on_every_api():
    fake = Fake(costs=(30.0, 100.0))
    with client(fake) as c:
        shed = c.post("/v1/rerank", json={"query": "x", "documents": DOCS, "deadline_ms": 25})
        tei = c.post("/rerank", json={"query": "x", "texts": DOCS}, headers={"X-Request-Timeout-Ms": "25"})
        native = c.post("/rerank", json={"query": "x", "documents": DOCS}, headers={"X-Request-Timeout-Ms": "25"})
        degraded = c.post("/v1/rerank", json={"query": "x", "documents": DOCS, "deadline_ms": 60})
    assert shed.status_code == tei.status_code == native.status_code == 503
    assert tei.json()["error_type"] == "Overloaded" and "deadline" in tei.json()["error"]
    assert int(shed.headers["Retry-After"]) >= 1
    assert degraded.status_code == 200 and degraded.json()["meta"]["degraded"] is True
    assert len(fake.calls) == 1


def test_model_faults_and_unreadable_documents_answer_in_cohere_shape():
    with client() as c:
        boom = c.post("/v2/rerank", json={"query": "x", "documents": ["boom"]})
        bad = c.post("/v2/rerank", json={"query": "x", "documents": ["bad"]})
        tei = c.post("/rerank", json={"query": "x", "texts": ["boom"]})
    assert boom.status_code == 500 and "internal error" in boom.json()["message"]
    assert bad.status_code == 422 and bad.json()["message"].startswith("documents: ")
    assert tei.status_code == 500 and tei.json()["error_type"] == "Backend"


def test_big_tei_bodies_are_decoded_in_steps_and_shed_by_the_header_deadline():
    """A TEI body over STEP_CHARS goes the stepwise way (``texts`` element by element); when its
    header's deadline passed while it arrived, it is shed before validation."""
    now = [0.0]
    fake = Fake()
    app = create_app(fake, ServeConfig(deadline_ms=1000), clock=lambda: now[0])
    texts = [f"the river in the rain {i} " + "x" * 1000 for i in range(400)]

    with TestClient(Late(app, now)) as c:  # the clock moves 200 ms while the body arrives
        ok = c.post("/rerank", json={"query": "river rain", "texts": texts, "return_text": True})
        bad = c.post("/rerank", json={"query": "q", "texts": texts + [5]})
        late = c.post("/rerank", json={"query": "q", "texts": texts + [5]}, headers={"X-Request-Timeout-Ms": "150"})
        cohere = c.post("/v1/rerank", json={"query": "q", "documents": texts, "top_n": 3})
    assert ok.status_code == 200 and len(ok.json()) == 400 and ok.json()[0]["text"] in texts
    assert bad.status_code == 422 and bad.json()["error"].startswith("texts[400]")
    assert late.status_code == 503 and "deadline" in late.json()["error"]  # not even validated
    assert late.json()["error_type"] == "Overloaded"
    assert cohere.status_code == 200 and len(cohere.json()["results"]) == 3
    assert len(fake.calls) == 2


def test_the_openapi_lists_the_standard_apis():
    with TestClient(create_app(Fake(), ServeConfig(docs=True), clock=FROZEN)) as c:
        paths = c.get("/openapi.json").json()["paths"]
    for path in ("/v1/rerank", "/v2/rerank"):
        schema = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert {"model", "query", "documents", "top_n", "return_documents", "rank_fields"} <= set(schema["properties"])
    native = paths["/rerank"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(native["properties"]) == {"query", "documents", "top_k", "deadline_ms"}  # as before


# -- a LightGBM stage with first-stage features, called with texts only ------------------------------


def test_a_lightgbm_stage_answers_texts_only_with_bm25_as_the_first_stage(tiny_beir, tmp_path):
    """Cohere's body has no first-stage scores; the student's first_stage_score/rank features then take
    bm25_doc and its rank (students.features): 200, ranked as the same documents sent with those scores."""
    import json

    import numpy as np
    import polars as pl

    from distill.cascade.model import Cascade
    from distill.data.beir import load_beir
    from distill.data.bm25 import bm25_run
    from students.features import FeatureExtractor
    from students.lightgbm import LightGBMConfig, train_lightgbm_student

    train = load_beir(tiny_beir, "train")
    candidates = bm25_run(train, 20)
    teacher = candidates.select("qid", "docid",
                                (pl.col("score") * -1.0 + pl.col("docid").str.len_chars()).cast(pl.Float32))
    lgbm = train_lightgbm_student(train, candidates, teacher, tmp_path / "lgbm", LightGBMConfig(
        n_estimators=20, min_data_in_leaf=5, num_leaves=8, valid_fraction=0.25, first_stage_features=True))
    spec = tmp_path / "cascade.json"
    spec.write_text(json.dumps({"format": "distill-cascade/1", "stages": [
        {"name": "bm25", "ranker": "bm25", "cutoff": None},
        {"name": "lightgbm", "ranker": str(lgbm), "cutoff": None}]}))
    test = load_beir(tiny_beir, "test")
    query = test.queries["text"][0]
    texts = test.corpus["text"].to_list()[:12]
    extractor = FeatureExtractor.load(lgbm)
    features = extractor.features(query, np.full(len(texts), -1), [""] * len(texts), texts)
    bm25_doc = features[:, extractor.feature_names.index("bm25_doc")].astype(float)
    config = ServeConfig(deadline_ms=60_000)
    with TestClient(create_app(Cascade.load(spec), config)) as c:
        cohere = c.post("/v1/rerank", json={"model": "any", "query": query, "documents": texts})
        scored = c.post("/rerank", json={"query": query, "documents": [
            {"id": str(i), "text": t, "score": float(s)} for i, (t, s) in enumerate(zip(texts, bm25_doc))]})
    assert cohere.status_code == 200, cohere.text
    assert scored.status_code == 200, scored.text
    body = cohere.json()
    assert body["meta"]["degraded"] is False
    assert [(s["name"], s["ran"]) for s in body["meta"]["stages"]] == [("bm25", True), ("lightgbm", True)]
    assert [str(x["index"]) for x in body["results"]] == [x["id"] for x in scored.json()["results"]]

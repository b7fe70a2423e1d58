"""``distill serve``'s readiness and what it says about degraded answers: ``/healthz`` is 503 until every
stage has run warm on the warm-up requests, the start-up log costs each stage against the default
deadline and warns of one that can never run (with the fix), and ``/metrics`` counts degraded answers
by stage and reason.

The cascade is tests/test_serve.py's :class:`Fake` (planted costs, reported stage times) under a frozen
clock, so no assertion depends on timing.
"""

from __future__ import annotations

import json
import logging
import threading

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from test_serve import DOCS, FROZEN, Fake, tiny_lightgbm_spec  # noqa: E402

from distill.serve.admission import WarmRun, never_fits  # noqa: E402
from distill.serve.app import (  # noqa: E402
    TYPICAL_CHARS,
    WARM_UP_DOCUMENTS,
    ServeConfig,
    WarmUp,
    create_app,
    warm_up_requests,
)
from distill.serve.service import skip_reason  # noqa: E402

WARM = [WarmUp("new documents", "river rain", [{"id": str(i), "text": t, "score": 3.0 - i}
                                               for i, t in enumerate(DOCS)])]
PAYLOAD = {"query": "river", "documents": DOCS}


def test_not_ready_until_the_warm_up_ran_then_ready():
    gate = threading.Event()
    fake = Fake(gate=gate)
    app = create_app(fake, ServeConfig(), clock=FROZEN, warm_up=WARM)
    with TestClient(app) as c:
        assert fake.entered.acquire(timeout=30)  # the warm-up is ranking
        starting = c.get("/healthz")
        assert starting.status_code == 503 and starting.json()["status"] == "starting"
        shed = c.post("/rerank", json=PAYLOAD)
        assert shed.status_code == 503 and "Retry-After" in shed.headers
        gate.set()
        assert app.state.service.ready.wait(timeout=30)
        ready = c.get("/healthz")
        assert ready.status_code == 200 and ready.json()["status"] == "ok"
        assert c.post("/rerank", json=PAYLOAD).status_code == 200
        metrics = c.get("/metrics").text
    assert len([call for call in fake.calls if call["query"] == "river rain"]) == 2  # cold, then measured
    assert 'distill_shed_total{reason="starting"} 1.0' in metrics


def test_what_the_warm_up_built_is_frozen_out_of_the_garbage_collector():
    """Once warm, every object alive (models, corpus) is frozen (``gc.freeze``): a full collection then traverses
    only what requests allocate, instead of stalling every request in flight."""
    import gc

    gc.unfreeze()
    app = create_app(Fake(), ServeConfig(), clock=FROZEN, warm_up=WARM)
    with TestClient(app):
        assert app.state.service.ready.wait(timeout=30)
        assert gc.get_freeze_count() > 0


def test_an_app_without_warm_up_is_ready_at_once():
    with TestClient(create_app(Fake(), ServeConfig(), clock=FROZEN)) as c:
        assert c.get("/healthz").status_code == 200


def test_a_failed_warm_up_is_never_ready_and_says_why():
    class Broken(Fake):
        def rank(self, *args, **kwargs):
            raise RuntimeError("no model")

    app = create_app(Broken(), ServeConfig(), clock=FROZEN)
    app.state.service.ready.clear()
    app.state.service.warm_up(WARM)
    with TestClient(app) as c:
        health = c.get("/healthz")
    assert health.status_code == 503
    assert health.json()["status"] == "failed" and "no model" in health.json()["error"]


def test_warns_of_a_stage_that_never_fits_the_default_deadline(caplog):
    """Modelled at 10 ms, measured at 500 ms on new documents (a bi-encoder embedding them): at the 100 ms
    default it can never run; the warning names it and the fixes."""
    config = ServeConfig()
    app = create_app(Fake(costs=(0.0, 10.0), measured_ms=500.0), config, clock=FROZEN)
    with caplog.at_level(logging.INFO, logger="distill.serve.service"):
        app.state.service.warm_up(warm_up_requests(config))
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("stage overlap: 100 new documents of ~") and "10.0 ms expected, 500.0 ms measured"
               in line and "default deadline 100 ms" in line for line in lines)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "stage 'overlap'" in warnings[0] and "every answer is degraded" in warnings[0]
    for fix in ("--corpus", "--deadline-ms 503", "fewer documents per request (about 19)"):
        assert fix in warnings[0]
    assert app.state.calibration.get(2)[1] > 1.0  # the calibration starts from the warm times


def test_no_warning_when_every_stage_fits(caplog):
    app = create_app(Fake(costs=(0.0, 10.0), measured_ms=8.0), ServeConfig(), clock=FROZEN)
    with caplog.at_level(logging.INFO, logger="distill.serve.service"):
        app.state.service.warm_up(WARM)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    assert app.state.service.ready.is_set()


def test_never_fits_by_the_spec_alone_or_for_the_first_stage():
    run = WarmRun("corpus documents", 100, 900, False, ["bm25", "ce"], [0.0, 400.0], [0.0, 390.0])
    why = never_fits(run, 100.0, 2.0)
    assert "stage 'ce'" in why and "--corpus" not in why and "about 24" in why
    first = WarmRun("new documents", 100, 900, True, ["lightgbm", "ce"], [150.0, 10.0], [140.0, 10.0])
    assert "shed" in never_fits(first, 100.0, 2.0)
    assert never_fits(run, 1000.0, 2.0) is None


def test_counts_degraded_answers_by_stage_and_reason():
    with TestClient(create_app(Fake(costs=(0.0, 10.0)), ServeConfig(), clock=FROZEN)) as c:
        assert c.post("/rerank", json={**PAYLOAD, "deadline_ms": 5}).json()["degraded"] is True
        assert c.post("/rerank", json=PAYLOAD).json()["degraded"] is False
        metrics = c.get("/metrics").text
        health = c.get("/healthz").json()
    assert 'distill_degraded_total{reason="deadline",stage="overlap"} 1.0' in metrics
    assert health["degraded"] == {"overlap": {"deadline": 1}}


def test_skip_reason_is_the_runtime_reasons_word():
    assert skip_reason("deadline: 3.00 ms spent + 9.00 ms expected > 5 ms") == "deadline"
    assert skip_reason(None) == "unknown"


def test_warm_up_requests_are_typical_with_and_without_a_corpus(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "title": "T" if i % 2 else "", "text": f"text {i}"}) + "\n"
                              for i in range(3)))
    new, known = warm_up_requests(ServeConfig(), tmp_path)
    assert new.new_documents and len(new.documents) == WARM_UP_DOCUMENTS
    assert all(TYPICAL_CHARS - 20 <= len(d["text"]) <= TYPICAL_CHARS for d in new.documents)
    assert len({d["text"] for d in new.documents}) > 1 and all("score" in d for d in new.documents)
    assert not known.new_documents
    assert [(d["id"], d.get("title"), d["text"]) for d in known.documents] == [
        ("d0", None, "text 0"), ("d1", "T", "text 1"), ("d2", None, "text 2")]
    small = warm_up_requests(ServeConfig(max_documents=5, max_document_chars=50))
    assert len(small) == 1 and len(small[0].documents) == 5
    assert all(len(d["text"]) <= 50 for d in small[0].documents)


def test_warms_a_real_tiny_cascade_on_new_and_corpus_documents(tiny_beir, tmp_path, caplog):
    """bm25 >> a tiny LightGBM student loaded with a corpus: both warm-up requests rank (the corpus's
    documents taken for its own), and its planted 10 s cost is warned of at the 100 ms default."""
    from distill.cascade.model import Cascade

    tiny_lightgbm_spec(tiny_beir, tmp_path)
    cascade = Cascade.load(tmp_path / "cascade.json", corpus=tiny_beir)

    serve = ServeConfig()
    requests = warm_up_requests(serve, tiny_beir)
    app = create_app(cascade, serve, warm_up=requests)
    with caplog.at_level(logging.INFO, logger="distill.serve.service"):
        app.state.service.warm_up(requests)
    assert app.state.service.ready.is_set()
    assert [r.label for r in requests] == ["new documents", "corpus documents"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("stage 'lightgbm'" in w and "--corpus" not in w for w in warnings)

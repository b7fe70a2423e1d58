"""Teachers scoring a dataset: check_teacher's sanity check, and score_teacher measuring the precision once,
keeping the measured sample and resuming in that precision."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from test_teachers import mixed_pairs

from distill.core.errors import InputError
from distill.data.beir import load_beir
from teachers import CrossEncoderTeacher, Teacher, check_teacher, precision


class QrelsTeacher(Teacher):
    """Scores a pair by its relevance label times ``sign`` (no model)."""

    kind = "fake"

    def __init__(self, dataset, sign: float) -> None:  # no model to load
        self.name, self.sign = f"qrels{sign:+}", sign
        texts = zip(dataset.query_texts(dataset.qrels["qid"]), dataset.doc_texts(dataset.qrels["docid"]))
        self.labels = dict(zip(texts, dataset.qrels["relevance"].to_list()))

    def score(self, queries, docs, progress=None):
        return np.array([self.sign * self.labels.get((q, d), 0) for q, d in zip(queries, docs)], dtype=np.float32)

    _load = _encode = _forward = None


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_check_teacher_warns_when_positives_lose(tiny_beir, caplog, sign):
    dataset = load_beir(tiny_beir, "test")
    run = dataset.queries.select("qid").join(dataset.corpus.select("docid"), how="cross")
    with caplog.at_level(logging.WARNING, logger="teachers.sanity"):
        report = check_teacher(QrelsTeacher(dataset, sign), dataset, run, n_queries=5)
    assert report["n_queries"] == 5 and report["n_pairs"] > 5 * 4
    assert report["ok"] == (sign > 0)
    assert report["win_rate"] == (1.0 if sign > 0 else 0.0)
    assert ("does not rank judged positives" in caplog.text) == (sign < 0)


@pytest.fixture
def fake_bf16(monkeypatch):
    """A CPU with native bf16 on which the tiny model runs bf16 twice as fast as fp32 and ranks
    like fp32 (both faked: the tiny model's own timings and bf16 ranks are machine noise)."""
    monkeypatch.setattr(precision, "native_precisions", lambda device_type: ("bf16",))
    monkeypatch.setattr(precision, "judge_precision",
                        lambda reference, candidate, dtype, **_: precision.PrecisionCheck(dtype, 1, True))
    clock = {"t": 0.0, "model": None}

    def timer():
        weights = next(clock["model"].parameters()).dtype
        clock["t"] += 1.0 if weights == torch.float32 else 0.5
        return clock["t"]

    monkeypatch.setattr(precision, "perf_counter", timer)
    monkeypatch.setattr(precision, "process_time", timer)
    return clock


def counting(teacher: Teacher) -> list[int]:
    """Count the pairs ``teacher`` runs through its model, call by call."""
    calls: list[int] = []
    inner = teacher._score

    def score(queries, docs, progress=None):
        calls.append(len(queries))
        return inner(queries, docs, progress)

    teacher._score = score
    return calls


@pytest.mark.isa
def test_score_teacher_measures_once_keeps_the_sample_and_resumes_in_that_precision(
        tiny_cross_encoder, tiny_beir, tmp_path, fake_bf16, monkeypatch):
    from distill.cache.store import CachedRanker, TeacherCache, read_scores
    from distill.core.errors import CacheMismatchError
    from distill.data.bm25 import bm25_run
    from teachers import score_teacher

    dataset = load_beir(tiny_beir, "train")
    run = bm25_run(dataset, 10)
    teacher = CrossEncoderTeacher(tiny_cross_encoder, max_length=128)
    fake_bf16["model"] = teacher.model
    calls = counting(teacher)
    result = score_teacher(teacher, dataset, run.head(120), tmp_path / "cache", show_progress=False)

    assert result.dtype == teacher.dtype == "bf16" and result.fingerprint["dtype"] == "bf16"
    assert next(teacher.model.parameters()).dtype == torch.bfloat16
    scores, manifest = read_scores(tmp_path / "cache")
    assert manifest["teacher"]["dtype"] == "bf16" and manifest["precision"] == result.precision
    assert [m["dtype"] for m in manifest["precision"]["measured"]] == ["fp32", "bf16"]
    assert manifest["precision"]["measured"][1]["pairs_per_s"] > manifest["precision"]["measured"][0]["pairs_per_s"]
    # the sample's scores are cache rows; the sanity check read them back and kept what it scored
    n = precision.SAMPLE_PAIRS
    assert result.sample_scored == n and result.sanity["reused"] > 0
    assert result.sample_scored + result.sanity["kept"] + result.scoring.scored == 120 == scores.height
    measuring = 2 * (precision.WARMUP_PAIRS + n)  # warm-up and timed sample, in fp32 and in bf16
    sanity_only = result.sanity["n_pairs"] - result.sanity["reused"] - result.sanity["kept"]  # judged, not candidates
    assert sum(calls) == measuring + result.sanity["kept"] + sanity_only + result.scoring.scored
    again = teacher.score(dataset.query_texts(scores["qid"]), dataset.doc_texts(scores["docid"]))
    np.testing.assert_allclose(again, scores["score"].to_numpy(), atol=1e-6)

    # a resumed run (a new process: auto again) scores the rest in the recorded precision, unmeasured
    chosen = []
    monkeypatch.setattr(precision, "choose_precision", lambda *a, **k: chosen.append(a))
    resumed = CrossEncoderTeacher(tiny_cross_encoder, max_length=128)
    later = score_teacher(resumed, dataset, run, tmp_path / "cache", show_progress=False)
    assert not chosen and later.reused_precision and later.precision is None and resumed.dtype == "bf16"
    assert later.scored == later.sanity["kept"] + later.scoring.scored == run.height - 120
    assert TeacherCache.open(tmp_path / "cache").manifest["precision"] == result.precision
    live = CachedRanker(tmp_path / "cache").live()  # the teacher evaluate --latency and cascade build time
    assert not chosen and not live.precision_pending and live.compute == "bf16"  # as its cache was scored

    # an explicit precision still wins: it is another teacher for this cache
    with pytest.raises(CacheMismatchError, match="dtype"):
        score_teacher(tiny_cross_encoder, dataset, run, tmp_path / "cache", dtype="fp32", max_length=128)


def test_score_teacher_refuses_a_file_as_cache(tiny_cross_encoder, tiny_beir, tmp_path):
    from distill.data.bm25 import bm25_run
    from teachers import score_teacher

    dataset = load_beir(tiny_beir, "train")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="folder"):
        score_teacher(tiny_cross_encoder, dataset, bm25_run(dataset, 3), tmp_path / "file", max_length=128)


@pytest.mark.isa
def test_score_teacher_weighs_an_export_against_every_pair_it_will_score(tiny_cross_encoder, tiny_beir, tmp_path,
                                                                        fake_bf16, monkeypatch):
    """Whether a graph runtime's export can pay off depends on the run's pairs, not on the sample it is timed on."""
    from distill.data.bm25 import bm25_run
    from distill.rankers.base import SETTLE_PAIRS
    from teachers import base, score_teacher

    totals = []
    choose = base.choose_precision
    monkeypatch.setattr(base, "choose_precision", lambda *a, **kw: totals.append(kw["total_pairs"]) or choose(*a, **kw))
    dataset = load_beir(tiny_beir, "train")
    teacher = CrossEncoderTeacher(tiny_cross_encoder, max_length=128)
    fake_bf16["model"] = teacher.model
    score_teacher(teacher, dataset, bm25_run(dataset, 10).head(120), tmp_path / "cache", show_progress=False,
                  sanity_check=False)
    assert totals == [120] and SETTLE_PAIRS < 120


@pytest.mark.isa
def test_first_score_call_keeps_the_measured_sample(tiny_cross_encoder, fake_bf16):
    teacher = CrossEncoderTeacher(tiny_cross_encoder, max_length=128)
    fake_bf16["model"] = teacher.model
    calls = counting(teacher)
    queries, docs = mixed_pairs(50)
    scores = teacher.score(queries, docs)
    assert teacher.dtype == "bf16" and teacher.precision["dtype"] == "bf16"
    n = precision.SAMPLE_PAIRS
    assert sum(calls) == 2 * (precision.WARMUP_PAIRS + n) + (50 - n)  # the sample is not scored again
    np.testing.assert_allclose(scores, teacher.score(queries, docs), atol=1e-6)

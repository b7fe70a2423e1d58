"""Rankers that ``distill serve`` (``--workers 4``) or an evaluation beside it calls from many threads at once:
each tokenizes (or encodes) one call at a time, and every call gets the scores it would get alone."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np


class Probe:
    """A tokenizer that notices two threads inside it at once: each call waits (up to a
    second) at a barrier for a second caller, so without the ranker's lock two concurrent
    calls meet there; with it, the barrier breaks and no overlap is counted."""

    def __init__(self, inner) -> None:
        self.inner, self.inside, self.overlaps = inner, 0, 0
        self.count = threading.Lock()
        self.barrier = threading.Barrier(2, timeout=1.0)

    def __call__(self, *args, **kwargs):
        with self.count:
            self.inside += 1
            self.overlaps += self.inside > 1
        try:
            self.barrier.wait()
        except threading.BrokenBarrierError:
            pass
        finally:
            with self.count:
                self.inside -= 1
        return self.inner(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def at_once(call, n: int = 4) -> list:
    """``call(i)`` from ``n`` threads at once; their results (or exceptions) by i."""
    out: list = [None] * n

    def run(i: int) -> None:
        try:
            out[i] = call(i)
        except BaseException as err:  # noqa: BLE001 - compared below
            out[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return out


def exported_cross_encoder(tiny_cross_encoder, tmp_path, monkeypatch):
    """An ExportedCrossEncoder over the tiny model's tokenizer, its graph session stubbed
    (score = number of tokens: tokenization is what is under test)."""
    import students.backends as backends

    folder = tmp_path / "exported"
    shutil.copytree(tiny_cross_encoder, folder)
    (folder / "distill.json").write_text(json.dumps({"kind": "exported-student", "format": "onnx", "model": {
        "role": "cross-encoder", "max_length": 64}}))
    monkeypatch.setattr(backends, "open_session", lambda *_, **__: (None, []))
    monkeypatch.setattr(backends, "run_graph", lambda session, inputs, encoded, width, *_: np.asarray(
        [[float(len(ids))] for ids in encoded["input_ids"]], dtype=np.float32))
    return backends.ExportedCrossEncoder(folder)


def test_an_exported_cross_encoder_tokenizes_one_call_at_a_time(tiny_cross_encoder, tmp_path, monkeypatch):
    from distill.rankers.documents import Documents

    ranker = exported_cross_encoder(tiny_cross_encoder, tmp_path, monkeypatch)
    texts = [f"the river and the rain {'lake ' * i}" for i in range(6)]
    docs = Documents([str(i) for i in range(6)], [""] * 6, texts, None, np.full(6, -1))
    expected = ranker.score_documents("rain", docs)
    ranker.tokenizer = probe = Probe(ranker.tokenizer)
    results = at_once(lambda i: ranker.score_documents("rain", docs))
    assert probe.overlaps == 0
    assert all(isinstance(r, np.ndarray) and np.array_equal(r, expected) for r in results), results


def test_a_teacher_tokenizes_one_call_at_a_time(tiny_cross_encoder):
    from teachers.cross_encoder import CrossEncoderTeacher

    teacher = CrossEncoderTeacher(str(tiny_cross_encoder), dtype="fp32", device="cpu", allow_untrained_head=True)
    queries, docs = ["rain"] * 6, [f"the river and the rain {'lake ' * i}" for i in range(6)]
    expected = teacher.score(queries, docs)
    teacher.tokenizer = probe = Probe(teacher.tokenizer)
    results = at_once(lambda i: teacher.score(queries, docs))
    assert probe.overlaps == 0
    assert all(isinstance(r, np.ndarray) and np.allclose(r, expected, atol=1e-5) for r in results), results


def test_a_bi_encoder_encodes_one_call_at_a_time(tiny_bi_encoder, tiny_beir):
    """`rerank` from several threads (an evaluation beside a server): SentenceTransformer.encode
    tokenizes with the fast tokenizer, which refuses concurrent calls."""
    import polars as pl

    from distill.data.beir import load_beir
    from students.bi_encoder import BiEncoderRanker

    dataset = load_beir(tiny_beir, "test")
    run = dataset.corpus.select("docid").head(6).with_columns(qid=pl.lit(dataset.queries["qid"][0]),
                                                              score=pl.lit(0.0))
    ranker = BiEncoderRanker(tiny_bi_encoder, precompute=False)
    expected = ranker.rerank(dataset, run)
    ranker.model.preprocess = probe = Probe(ranker.model.preprocess)  # where encode tokenizes
    results = at_once(lambda i: ranker.rerank(dataset, run))
    assert probe.overlaps == 0
    assert all(isinstance(r, pl.DataFrame) and np.allclose(r["score"], expected["score"], atol=1e-5)
               for r in results), results

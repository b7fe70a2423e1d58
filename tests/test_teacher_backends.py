"""A cross-encoder teacher scoring through ONNX Runtime or OpenVINO (the ``onnx`` extra): the
same scores as torch fp32, recorded in the fingerprint, resumed from a cache, refused where
the runtime is missing."""

from __future__ import annotations

import numpy as np
import pytest

from distill.core.errors import ConfigError
from distill.data.beir import load_beir
from distill.inference.graph import available_backends as installed_backends
from teachers import CrossEncoderTeacher, graph
from teachers.loading import teacher_from_fingerprint

INSTALLED = installed_backends()


@pytest.fixture
def graph_runtimes(monkeypatch):
    """The runtimes installed here (the suite pins them off, as machines differ)."""
    monkeypatch.setattr(graph, "available_backends", installed_backends)


# The graph runtimes run on the CPU only (teachers.cross_encoder): these tests pin the device, so a CUDA machine
# runs them as a CPU-only one does. fp32 graphs differ from torch by rounding: at most 4e-9 on AVX-512, 7e-9 on
# qemu's Haswell, 2e-4 of the tiny model's score spread (std 3e-5), so the fidelity check (near-ties: 2% of it)
# and atol=1e-4 hold on every instruction set with two orders of magnitude to spare.
@pytest.mark.isa
@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_a_graph_backend_scores_like_torch_fp32_and_says_so_in_the_fingerprint(
        tiny_cross_encoder, graph_runtimes, backend):
    if backend not in INSTALLED:
        pytest.skip(f"{backend} is not installed (pip install 'distill[onnx]')")
    from test_teachers import mixed_pairs

    queries, docs = mixed_pairs(40)
    fp32 = CrossEncoderTeacher(tiny_cross_encoder, max_length=128, dtype="fp32", device="cpu").score(queries, docs)
    teacher = CrossEncoderTeacher(tiny_cross_encoder, max_length=128, backend=backend, device="cpu")
    scores = teacher.score(queries, docs)
    np.testing.assert_allclose(scores, fp32, atol=1e-4)
    fingerprint = teacher.fingerprint()
    assert teacher.compute == f"{backend}:fp32" and fingerprint["backend"] == backend
    assert teacher.precision["dtype"] == f"{backend}:fp32" and teacher.precision["measured"][1]["passed"]
    again = teacher_from_fingerprint(fingerprint, device="cpu")  # a resumed run or a scale-out worker
    assert again.compute == teacher.compute
    np.testing.assert_allclose(again.score(queries, docs), scores, atol=1e-5)


@pytest.mark.isa
def test_a_cache_scored_through_a_graph_runtime_resumes_in_it(tiny_cross_encoder, tiny_beir, tmp_path, graph_runtimes):
    if "onnx" not in INSTALLED:
        pytest.skip("onnxruntime is not installed")
    from distill.cache.store import read_scores
    from distill.data.bm25 import bm25_run
    from teachers import score_teacher

    dataset = load_beir(tiny_beir, "train")
    run = bm25_run(dataset, 10)
    first = score_teacher(tiny_cross_encoder, dataset, run.head(60), tmp_path / "cache", backend="onnx",
                          max_length=128, show_progress=False, sanity_check=False, device="cpu")
    assert first.dtype == "onnx:fp32" and first.fingerprint["backend"] == "onnx"
    later = score_teacher(tiny_cross_encoder, dataset, run, tmp_path / "cache", max_length=128, show_progress=False,
                          sanity_check=False, device="cpu")  # auto, in a new process: takes over the recorded compute
    assert later.reused_precision and later.dtype == "onnx:fp32"
    scores, manifest = read_scores(tmp_path / "cache")
    assert scores.height == run.height and manifest["teacher"]["backend"] == "onnx"


def test_a_missing_runtime_is_a_clear_error(tiny_cross_encoder, monkeypatch):
    with pytest.raises(ConfigError, match="not available here"):
        CrossEncoderTeacher(tiny_cross_encoder, max_length=128, backend="openvino")
    with pytest.raises(ConfigError, match="auto, torch, onnx, openvino"):
        CrossEncoderTeacher(tiny_cross_encoder, max_length=128, backend="tensorrt")

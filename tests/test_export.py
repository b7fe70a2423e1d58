"""distill export: tiny students to ONNX Runtime / OpenVINO, loaded back through load_ranker."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
pytest.importorskip("onnxscript")

from distill.manifest import write_manifest  # noqa: E402

INT8_AGREEMENT = dict(min_overlap=0.7, min_kendall=0.7)  # int8 is looser than fp32 on a random model


def _student(folder: Path, kind: str, beir: Path) -> Path:
    write_manifest(folder, kind, {}, data={"dataset": "tiny", "split": "train", "path": str(beir)})
    return folder


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory, tiny_beir) -> Path:
    """The tiny cross-encoder with weights drawn wide: at the default initialisation (std 0.02)
    its scores differ by ~1e-5 between documents, below int8's resolution, so no order survives."""
    import tiny
    import torch
    from transformers import AutoModelForSequenceClassification

    folder = tiny.build_bert_cross_encoder(tmp_path_factory.mktemp("export_ce"))
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2 and "embeddings" not in name:
                param.normal_(0.0, 0.3)
    model.save_pretrained(folder)
    return _student(folder, "cross-encoder-student", tiny_beir)


@pytest.fixture(scope="module")
def bi_encoder(tiny_bi_encoder, tiny_beir) -> Path:
    return _student(tiny_bi_encoder, "bi-encoder-student", tiny_beir)


@pytest.fixture(scope="module")
def candidates(tiny_beir):
    from distill.bm25 import bm25_run
    from distill.data import load_beir

    dataset = load_beir(tiny_beir, "test")
    return dataset, bm25_run(dataset, k=10)


def _export(model: Path, out: Path, **options):
    from students.export import ExportConfig, export_model

    fidelity = export_model(model, out, ExportConfig(**options))
    return fidelity


def _scores(spec: Path, candidates, **kwargs) -> np.ndarray:
    from distill.rankers import load_ranker

    dataset, run = candidates
    ranker = load_ranker(str(spec), name="x", **kwargs)
    return ranker.rerank(dataset, run).sort(["qid", "docid"])["score"].to_numpy()


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_cross_encoder_round_trip_in_fp32(cross_encoder, candidates, tmp_path, fmt):
    out = tmp_path / fmt
    fidelity = _export(cross_encoder, out, format=fmt)
    manifest = json.loads((out / "distill.json").read_text())
    assert manifest["kind"] == "exported-student" and manifest["format"] == fmt
    assert manifest["fidelity"] == fidelity and fidelity["passed"] and fidelity["mode"] == "qrels"
    assert fidelity["ndcg@10_ratio"] == pytest.approx(1.0) and fidelity["overlap@10"] == 1.0
    reference = _scores(cross_encoder, candidates, dtype="fp32")
    np.testing.assert_allclose(_scores(out, candidates), reference, rtol=1e-4, atol=1e-4)
    assert not list(tmp_path.glob(".*.tmp")), "no temporary folder left behind"


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_cross_encoder_int8_keeps_the_order(cross_encoder, candidates, tmp_path, fmt):
    from scipy import stats

    out = tmp_path / fmt
    fidelity = _export(cross_encoder, out, format=fmt, quantize="int8", check="agreement", **INT8_AGREEMENT)
    assert fidelity["passed"] and fidelity["mode"] == "agreement"
    assert json.loads((out / "distill.json").read_text())["quantize"] == "int8"
    exported, reference = _scores(out, candidates), _scores(cross_encoder, candidates, dtype="fp32")
    assert not np.allclose(exported, reference, rtol=1e-6, atol=0), "int8 should not be bit-exact"
    assert stats.spearmanr(exported, reference).statistic > 0.9


@pytest.mark.parametrize(("fmt", "quantize"), [("onnx", "int8"), ("openvino", None)])
def test_bi_encoder_round_trip(bi_encoder, candidates, tmp_path, fmt, quantize):
    from distill.rankers import load_ranker
    from students.backends import ExportedBiEncoderRanker

    out = tmp_path / fmt
    options = INT8_AGREEMENT if quantize else {}
    assert _export(bi_encoder, out, format=fmt, quantize=quantize, **options)["passed"]
    ranker = load_ranker(str(out), name="x")
    assert isinstance(ranker, ExportedBiEncoderRanker)
    dataset, run = candidates
    ranker.prepare(dataset)  # corpus embeddings, as a cascade stage uses them
    exported = ranker.rerank(dataset, run).sort(["qid", "docid"])["score"].to_numpy()
    reference = _scores(bi_encoder, candidates)
    tolerance = 0.05 if quantize else 1e-4
    np.testing.assert_allclose(exported, reference, atol=tolerance)


def test_a_failing_check_refuses_and_writes_nothing(cross_encoder, tmp_path):
    from students.export import ExportRefused

    out = tmp_path / "export"
    with pytest.raises(ExportRefused, match="nothing was written"):
        _export(cross_encoder, out, min_overlap=1.01)
    assert not out.exists()
    assert not list(tmp_path.iterdir()), "no temporary folder left behind"

    out.mkdir()
    (out / "keep.txt").write_text("an earlier export")
    with pytest.raises(ExportRefused):
        _export(cross_encoder, out, min_ndcg_ratio=1.01)
    assert [p.name for p in out.iterdir()] == ["keep.txt"], "a refused export leaves the old folder alone"


def test_cli_exports_and_evaluate_loads_it(cross_encoder, tiny_beir, candidates, tmp_path):
    from typer.testing import CliRunner

    from distill.cli import app, register_commands
    from distill.runs import write_run
    from students.export import ExportRefused

    register_commands()
    runner = CliRunner()
    out = tmp_path / "onnx"
    refused = runner.invoke(app, ["export", str(cross_encoder), "--out", str(out), "--min-overlap", "1.01"])
    # distill.cli.main turns this DistillError into one line and exit code 2
    assert isinstance(refused.exception, ExportRefused) and "nothing was written" in str(refused.exception)
    assert not out.exists()

    done = runner.invoke(app, ["export", str(cross_encoder), "--format", "onnx", "--out", str(out)])
    assert done.exit_code == 0, done.output
    _, run = candidates
    write_run(run, tmp_path / "cands.trec", tag="bm25")
    evaluated = runner.invoke(app, [
        "evaluate", "--data", str(tiny_beir), "--split", "test", "--run", str(tmp_path / "cands.trec"),
        "--ranker", "bm25=bm25", "--ranker", f"torch={cross_encoder}", "--ranker", f"onnx={out}",
        "--latency", "--latency-queries", "2", "--out", str(tmp_path / "eval"),
    ])
    assert evaluated.exit_code == 0, evaluated.output
    from distill.evaluation import EvaluationResult

    result = EvaluationResult.load(tmp_path / "eval")
    ndcg = dict(zip(result.summary["ranker"], result.summary["nDCG@10"]))
    assert ndcg["onnx"] == pytest.approx(ndcg["torch"], abs=1e-6)
    assert {"torch", "onnx"} <= set(result.latency) and result.configs["onnx"]["format"] == "onnx"


def test_the_check_of_a_student_trained_with_unjudged_queries_uses_its_judged_split(tiny_beir, tmp_path):
    from distill.errors import ConfigError
    from students.export import ExportConfig, _source_manifest, _training_data

    folder = tmp_path / "student"
    write_manifest(folder, "cross-encoder-student", {}, data={"split": "train+pseudo_queries", "path": str(tiny_beir)})
    dataset = _training_data(folder, _source_manifest(folder), ExportConfig(format="onnx"))
    assert dataset.split == "train" and dataset.qrels.height > 0
    write_manifest(folder, "cross-encoder-student", {}, data={"split": "queries:log", "path": str(tiny_beir)})
    with pytest.raises(ConfigError, match="--split"):
        _training_data(folder, _source_manifest(folder), ExportConfig(format="onnx"))


def test_export_prints_no_torch_exporter_noise(cross_encoder, tmp_path):
    """torch resets its own loggers when it is imported, after distill set them: the ONNX
    exporter's warnings (e.g. "torchvision is not installed") stay off unless --verbose."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TORCH_LOGS"}  # what a user's shell has
    argv = [sys.executable, "-m", "distill.cli", "export", str(cross_encoder), "--format", "onnx",
            "--out", str(tmp_path / "onnx")]
    process = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert process.returncode == 0, process.stderr
    assert "torch/onnx" not in process.stderr and "_registration.py" not in process.stderr, process.stderr

"""distill export: tiny students to ONNX Runtime / OpenVINO, loaded back through load_ranker."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
pytest.importorskip("onnxscript")

from distill.core.manifest import write_manifest  # noqa: E402

# int8 with 7-bit weights (students/export.py) is exact integer arithmetic in ONNX Runtime on every CPU: the same
# order on AVX-512-VNNI and on qemu's Haswell (Kendall tau 0.954 on the gate's sample, pooled Spearman 0.996 on
# the test pairs, both). OpenVINO's int8 kernels differ by CPU (without VNNI, 8-bit sums saturate: an AVX2 EPYC
# kept tau 0.64 of an earlier export where AVX-512-VNNI kept 0.90; qemu's Haswell, whose AVX2 emulation is itself
# wrong in places, 0.20 against 0.957 here; docs/cpus.md), so its test checks the int8 graph with the gate open,
# and the gate's decision is tested on injected scores below.
GATE_OPEN = dict(min_overlap=0.0, min_kendall=-1.0, min_ndcg_ratio=0.0)
QUANTIZED_OPS = {"onnx": "MatMulInteger", "openvino": "FakeQuantize"}  # what each runtime's int8 graph is made of


def _student(folder: Path, kind: str, beir: Path) -> Path:
    write_manifest(folder, kind, {}, data={"dataset": "tiny", "split": "train", "path": str(beir)})
    return folder


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory, tiny_beir) -> Path:
    """The tiny cross-encoder as a bag of words whose score spread dominates int8 rounding.

    At the default initialisation (std 0.02) its scores differ by ~1e-5 between documents, below int8's
    resolution. With attention values and outputs drawn wide (std 0.3) and queries and keys left small, attention
    stays uniform: [CLS] reads the mean of the pair's token values, which differs by document well beyond int8's
    rounding of well-scaled activations (all weights wide instead gave outliers that int8 reorders).
    """
    import tiny
    import torch
    from transformers import AutoModelForSequenceClassification

    folder = tiny.build_bert_cross_encoder(tmp_path_factory.mktemp("export_ce"))
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2 and ("attention.self.value" in name or "attention.output.dense" in name):
                param.normal_(0.0, 0.3)
    model.save_pretrained(folder)
    return _student(folder, "cross-encoder-student", tiny_beir)


@pytest.fixture(scope="module")
def bi_encoder(tiny_bi_encoder, tiny_beir, tmp_path_factory) -> Path:
    import shutil

    # a copy: the manifest must not turn the session's plain sentence-transformers folder into a student
    folder = shutil.copytree(tiny_bi_encoder, tmp_path_factory.mktemp("export_bi") / "model")
    return _student(folder, "bi-encoder-student", tiny_beir)


@pytest.fixture(scope="module")
def candidates(tiny_beir):
    from distill.data.beir import load_beir
    from distill.data.bm25 import bm25_run

    dataset = load_beir(tiny_beir, "test")
    return dataset, bm25_run(dataset, k=10)


def _export(model: Path, out: Path, **options):
    from students.export import ExportConfig, export_model

    fidelity = export_model(model, out, ExportConfig(**options))
    return fidelity


def _scores(spec: Path, candidates, **kwargs) -> np.ndarray:
    from distill.rankers.loading import load_ranker

    dataset, run = candidates
    ranker = load_ranker(str(spec), name="x", **kwargs)
    return ranker.rerank(dataset, run).sort(["qid", "docid"])["score"].to_numpy()


def _op_types(folder: Path, fmt: str) -> set[str]:
    """The operation types of the exported graph in ``folder``."""
    if fmt == "onnx":
        import onnx

        return {node.op_type for node in onnx.load(folder / "model.onnx").graph.node}
    import openvino as ov

    return {op.get_type_name() for op in ov.Core().read_model(folder / "openvino_model.xml").get_ops()}


# fp32 graphs differ from torch by rounding only (at most 4e-6 of the scores' standard deviation here), a thousand
# times below the gap between the fixture's closest candidates (4e-3 of it): the order, and so nDCG and the top-10,
# come out identical on every CPU.
@pytest.mark.isa
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


@pytest.mark.isa
def test_an_onnx_int8_export_keeps_the_order_on_every_cpu(cross_encoder, candidates, tmp_path):
    from scipy import stats

    out = tmp_path / "onnx"
    fidelity = _export(cross_encoder, out, format="onnx", quantize="int8", check="agreement")  # default gate: 0.9
    assert fidelity["passed"] and fidelity["mode"] == "agreement"
    assert json.loads((out / "distill.json").read_text())["quantize"] == "int8"
    assert QUANTIZED_OPS["onnx"] in _op_types(out, "onnx")
    exported, reference = _scores(out, candidates), _scores(cross_encoder, candidates, dtype="fp32")
    assert not np.allclose(exported, reference, rtol=1e-6, atol=0), "int8 should not be bit-exact"
    assert stats.spearmanr(exported, reference).statistic > 0.98


@pytest.mark.isa
def test_an_openvino_int8_export_is_an_int8_graph_that_loads(cross_encoder, candidates, tmp_path):
    out = tmp_path / "openvino"
    fidelity = _export(cross_encoder, out, format="openvino", quantize="int8", check="agreement", **GATE_OPEN)
    assert fidelity["passed"] and fidelity["mode"] == "agreement" and -1 <= fidelity["kendall_tau"] <= 1
    assert json.loads((out / "distill.json").read_text())["fidelity"] == fidelity
    assert QUANTIZED_OPS["openvino"] in _op_types(out, "openvino")
    exported, reference = _scores(out, candidates), _scores(cross_encoder, candidates, dtype="fp32")
    assert np.isfinite(exported).all() and exported.shape == reference.shape
    assert not np.allclose(exported, reference, rtol=1e-6, atol=0), "int8 should not be bit-exact"


@pytest.mark.isa
@pytest.mark.parametrize(("fmt", "quantize"), [("onnx", "int8"), ("openvino", None)])
def test_bi_encoder_round_trip(bi_encoder, candidates, tmp_path, fmt, quantize):
    from distill.rankers.loading import load_ranker
    from students.backends import ExportedBiEncoderRanker

    out = tmp_path / fmt
    options = GATE_OPEN if quantize else {}
    assert _export(bi_encoder, out, format=fmt, quantize=quantize, **options)["passed"]
    ranker = load_ranker(str(out), name="x")
    assert isinstance(ranker, ExportedBiEncoderRanker)
    dataset, run = candidates
    ranker.prepare(dataset)  # corpus embeddings, as a cascade stage uses them
    exported = ranker.rerank(dataset, run).sort(["qid", "docid"])["score"].to_numpy()
    reference = _scores(bi_encoder, candidates)
    # cosine scores: int8 (exact integer sums on every CPU) moved them by about 1e-3 (6e-4 with 8-bit weights),
    # fp32 by 1e-6; 0.05, 5% of their [-1, 1] range, still fails a broken graph
    tolerance = 0.05 if quantize else 1e-4
    np.testing.assert_allclose(exported, reference, atol=tolerance)


def test_a_failing_check_refuses_and_writes_nothing(cross_encoder, tmp_path):
    from students.export import ExportRefused

    out = tmp_path / "export"
    with pytest.raises(ExportRefused, match="nothing was written"):
        _export(cross_encoder, out, min_overlap=1.01)
    assert not out.exists()
    assert not list(tmp_path.iterdir()), "no temporary folder left behind"

    write_manifest(out, "exported-student", {})  # an earlier export
    (out / "keep.txt").write_text("an earlier export")
    with pytest.raises(ExportRefused):
        _export(cross_encoder, out, min_ndcg_ratio=1.01)
    assert sorted(p.name for p in out.iterdir()) == ["distill.json", "keep.txt"], \
        "a refused export leaves the old folder alone"


@pytest.mark.isa  # an fp32 ONNX graph against torch (see test_cross_encoder_round_trip_in_fp32)
def test_cli_exports_and_evaluate_loads_it(cross_encoder, tiny_beir, candidates, tmp_path):
    from typer.testing import CliRunner

    from distill.app.cli import app, register_commands
    from distill.data.runs import write_run
    from students.export import ExportRefused

    register_commands()
    runner = CliRunner()
    out = tmp_path / "onnx"
    refused = runner.invoke(app, ["export", str(cross_encoder), "--out", str(out), "--min-overlap", "1.01"])
    # distill.app.cli.main turns this DistillError into one line and exit code 2
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
    from distill.evaluation.runner import EvaluationResult

    result = EvaluationResult.load(tmp_path / "eval")
    ndcg = dict(zip(result.summary["ranker"], result.summary["nDCG@10"]))
    assert ndcg["onnx"] == pytest.approx(ndcg["torch"], abs=1e-6)
    assert {"torch", "onnx"} <= set(result.latency) and result.configs["onnx"]["format"] == "onnx"


def test_the_check_of_a_student_trained_with_unjudged_queries_uses_its_judged_split(tiny_beir, tmp_path):
    from distill.core.errors import ConfigError
    from students.export import ExportConfig, _source_manifest, _training_data

    folder = tmp_path / "student"
    write_manifest(folder, "cross-encoder-student", {}, data={"split": "train+pseudo_queries", "path": str(tiny_beir)})
    dataset = _training_data(folder, _source_manifest(folder), ExportConfig(format="onnx"))
    assert dataset.split == "train" and dataset.qrels.height > 0
    write_manifest(folder, "cross-encoder-student", {}, data={"split": "queries:log", "path": str(tiny_beir)})
    with pytest.raises(ConfigError, match="--split"):
        _training_data(folder, _source_manifest(folder), ExportConfig(format="onnx"))


@pytest.mark.isa  # an OpenVINO int8 graph (the gate open)
def test_export_prints_no_torch_exporter_noise_nor_nncf_bars(cross_encoder, tmp_path):
    """torch resets its own loggers when it is imported, after distill set them: the ONNX exporter's warnings
    (e.g. "torchvision is not installed") stay off unless --verbose; so do NNCF's calibration progress bars."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TORCH_LOGS"}  # what a user's shell has
    argv = [sys.executable, "-m", "distill.app.cli", "export", str(cross_encoder), "--format", "openvino",
            "--quantize", "int8", "--check", "agreement", "--min-overlap", "0", "--min-kendall", "-1",
            "--out", str(tmp_path / "openvino")]
    process = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert process.returncode == 0, process.stderr
    assert "torch/onnx" not in process.stderr and "_registration.py" not in process.stderr, process.stderr
    assert "Statistics collection" not in process.stdout + process.stderr, "NNCF's bars"


# -- --quantize auto: the fastest passing variant, on speeds the test injects -----------------------------------------


def test_an_export_is_timed_against_the_model_as_evaluate_runs_it_bf16_where_auto_keeps_it(cross_encoder, tmp_path,
                                                                                            monkeypatch):
    """On a CPU where ``dtype="auto"`` settles on bf16 (AMX: torch bf16 ranked as fast as every export there), an
    export is compared with torch bf16, not fp32, while its scores are still checked against fp32."""
    from students import export_variants
    from students.backends import ExportedCrossEncoder
    from teachers import precision
    from teachers.cross_encoder import CrossEncoderTeacher

    settled, timed = [], []

    def settle(self, queries, docs, total_pairs=None):  # auto's measurement, its outcome injected
        if self.precision_pending:
            settled.append(self.requested_dtype)
            self.use_precision("bf16")

    def measure(ranker, dataset, run, **settings):
        timed.append("export" if isinstance(ranker, ExportedCrossEncoder) else ranker.compute)
        return {"export": 60.0, "bf16": 40.0, "fp32": 100.0}[timed[-1]]

    monkeypatch.setattr(precision, "native_precisions", lambda device_type: ("bf16",))  # a CPU with native bf16
    monkeypatch.setattr(CrossEncoderTeacher, "settle_precision", settle)
    monkeypatch.setattr(export_variants, "measure_speed", measure)
    fidelity = _export(cross_encoder, tmp_path / "onnx", format="onnx", quantize="auto", **GATE_OPEN)
    selection = fidelity["selection"]
    assert settled == ["auto"] and timed[0] == "bf16", "the baseline is loaded as evaluate loads it, then timed"
    assert selection["torch_compute"] == fidelity["speed"]["torch_compute"] == "bf16"
    assert selection["torch_ms_per_query"] == 40.0 and fidelity["speed"]["speedup"] == pytest.approx(40 / 60)
    assert "no variant that passes the fidelity check is faster than torch bf16" in selection["why"]
    assert fidelity["ndcg@10_ratio"] == pytest.approx(1.0), "checked against the fp32 model, not the bf16 one"


def _fake_speeds(monkeypatch, speeds: dict[str, float]) -> list[dict]:
    """Replace the timing with ``speeds`` (ms per query by variant name, ``torch`` for the fp32 model); return
    the settings each measurement was asked for."""
    from students import export_variants
    from students.backends import ExportedCrossEncoder

    calls: list[dict] = []

    def measure(ranker, dataset, run, **settings):
        calls.append(settings)
        if not isinstance(ranker, ExportedCrossEncoder):
            return speeds["torch"]
        return speeds[export_variants.variant_name(ranker.format, ranker.manifest["quantize"])]

    monkeypatch.setattr(export_variants, "measure_speed", measure)
    return calls


@pytest.mark.isa  # OpenVINO int8 graphs (the gate is open: only NaN scores could fail them)
def test_auto_export_keeps_the_fastest_and_records_every_variant(cross_encoder, tmp_path, monkeypatch):
    from distill.evaluation.runner import EvaluateConfig
    from distill.rankers.loading import load_ranker

    speeds = {"torch": 100.0, "openvino": 90.0, "openvino_int8": 30.0, "onnx": 130.0, "onnx_int8": 45.0}
    calls = _fake_speeds(monkeypatch, speeds)
    out = tmp_path / "auto"
    fidelity = _export(cross_encoder, out, quantize="auto", **GATE_OPEN)
    manifest = json.loads((out / "distill.json").read_text())
    assert manifest["fidelity"] == fidelity and fidelity["passed"]
    assert (manifest["format"], manifest["quantize"]) == ("openvino", "int8")
    assert QUANTIZED_OPS["openvino"] in _op_types(out, "openvino") and not (out / "model.onnx").exists()
    selection = fidelity["selection"]
    assert selection["kept"] == "openvino_int8" and selection["torch_ms_per_query"] == 100.0
    assert {row["variant"]: row["ms_per_query"] for row in selection["candidates"]} == \
        {name: ms for name, ms in speeds.items() if name != "torch"}
    assert all("overlap@10" in row and "ndcg@10_ratio" in row for row in selection["candidates"])
    assert fidelity["speed"]["speedup"] == pytest.approx(100 / 30)
    # timed as distill evaluate --latency times a ranker by default: its top 100 candidates, 1 thread
    defaults = EvaluateConfig()
    assert len(calls) == 5 and all(c["candidates"] == defaults.k and c["threads"] == defaults.threads for c in calls)
    assert load_ranker(str(out), name="x").get_config_dict()["quantize"] == "int8"


def test_auto_with_a_format_keeps_its_fastest_even_when_slower_than_torch_and_says_so(cross_encoder, tiny_beir,
                                                                                     tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from distill.app.cli import app, register_commands
    from students.export import ExportRefused

    _fake_speeds(monkeypatch, {"torch": 100.0, "onnx": 150.0, "onnx_int8": 120.0})
    register_commands()
    runner, out = CliRunner(), tmp_path / "onnx"
    argv = ["export", str(cross_encoder), "--format", "onnx", "--quantize", "auto", "--out", str(out),
            "--check", "agreement", "--min-overlap", "0", "--min-kendall", "-1"]  # the gate open: fp32 and int8 pass
    done = runner.invoke(app, argv, env={"COLUMNS": "250"})
    assert done.exit_code == 0, done.output
    selection = json.loads((out / "distill.json").read_text())["fidelity"]["selection"]
    assert [row["variant"] for row in selection["candidates"]] == ["onnx", "onnx_int8"], "no OpenVINO variant"
    assert selection["kept"] == "onnx_int8" and "is faster than torch fp32" in selection["why"]
    assert "torch fp32" in done.output and "onnx_int8" in done.output and "0.83x" in done.output

    refused = runner.invoke(app, [*argv[:-6], "--overwrite", "--min-overlap", "1.01"])
    assert isinstance(refused.exception, ExportRefused) and "any variant" in str(refused.exception)
    assert "onnx_int8: top-10 overlap" in str(refused.exception)
    assert json.loads((out / "distill.json").read_text())["quantize"] == "int8", "the earlier export is kept"

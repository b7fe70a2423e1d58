"""The teachers' precision policy: the fidelity check, the candidate computes a machine offers, reduced precision
used only after the check, and auto's choice of the fastest precision that ranks like fp32."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from test_teachers import mixed_pairs

from distill import hardware
from distill.core.errors import ConfigError
from distill.inference.device import cpu_supports_bf16
from distill.inference.quantize import int8_engine
from teachers import CrossEncoderTeacher, precision


def test_precision_decision_on_fake_scores():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=256)
    assert precision.judge_precision(reference, reference + rng.normal(scale=1e-4, size=256), "bf16").passed
    assert not precision.judge_precision(reference, reference + rng.normal(scale=0.3, size=256), "bf16").passed
    assert not precision.judge_precision(reference, np.full(256, np.nan), "fp16").passed
    assert not precision.judge_precision(np.ones(256), np.ones(256), "fp16").passed


def test_the_fidelity_check_lets_near_ties_swap_and_nothing_else():
    """bf16 on a trained MiniLM teacher swapped a few near-tied pairs of a 32-pair sample (Spearman 0.9989, every score
    within 0.013 of fp32's): not a reason to pay for fp32. A reordering of the sample is."""
    reference = np.linspace(-5.0, 5.0, 32)
    ties = [5, 15, 25]
    reference[ties] = reference[[t + 1 for t in ties]] - 0.01  # three near-ties, 0.01 apart (the std is about 3)
    near = reference.copy()
    for t in ties:
        near[[t, t + 1]] = near[[t + 1, t]]
    check = precision.judge_precision(reference, near, "bf16")
    assert check.spearman < 0.999 and check.passed and check.discordant == 0
    one = reference.copy()
    one[[0, 1]] = one[[1, 0]]  # one clear reversal of 496 couples: rounding, not a broken compute
    check = precision.judge_precision(reference, one, "bf16")
    assert check.discordant == 1 and check.passed
    clear = reference.copy()
    clear[[0, 31]] = clear[[31, 0]]  # the lowest scored highest: 61 couples reversed
    check = precision.judge_precision(reference, clear, "bf16")
    assert check.discordant == 61 and not check.passed
    coarse = np.round(reference / 2) * 2 + np.linspace(0, -0.5, 32)  # rounding coarse against the scores' spread
    assert not precision.judge_precision(reference, coarse, "bf16").passed


@pytest.mark.isa
def test_auto_dtype_candidates(tmp_path, monkeypatch):
    cpu = torch.device("cpu")
    flags = tmp_path / "cpuinfo"
    flags.write_text("processor : 0\nflags : fpu sse avx2 avx512f amx_bf16\n")
    assert cpu_supports_bf16(flags)
    flags.write_text("processor : 0\nflags : fpu sse avx2\n")
    assert not cpu_supports_bf16(flags)
    monkeypatch.undo()  # the real native_precisions, on a faked CPU
    monkeypatch.setattr(hardware, "cpu_supports_bf16", lambda: False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)  # the faked flags decide, in a capped run too
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    candidates = precision.candidate_computes
    graphs = ("onnx", "openvino")
    assert candidates("auto", cpu) == ("fp32",)
    assert candidates("auto", cpu, "auto", graphs) == ("fp32", "onnx:fp32", "openvino:fp32")
    monkeypatch.setattr(hardware, "cpu_supports_bf16", lambda: True)
    assert candidates("auto", cpu) == ("fp32", "bf16")
    assert candidates("auto", cpu, "auto", graphs) == ("fp32", "bf16", "onnx:fp32", "openvino:fp32", "openvino:bf16")
    assert candidates("auto", cpu, "torch", graphs) == ("fp32", "bf16")  # --backend torch: no graph runtime
    assert candidates("fp16", cpu, "auto", graphs) == ("fp32", "fp16")  # an explicit dtype stays in torch
    assert candidates("fp32", cpu) == ("fp32",)
    assert candidates("auto", cpu, "openvino", graphs) == ("fp32", "openvino:fp32")
    assert candidates("bf16", cpu, "openvino", graphs) == ("fp32", "openvino:bf16")
    assert candidates("auto", torch.device("mps")) == ("fp32",)
    with pytest.raises(ConfigError, match="auto, fp32, bf16, fp16, int8"):
        candidates("int4", cpu)
    monkeypatch.setattr(precision, "int8_available", lambda device_type: device_type == "cpu")  # a quantized engine
    assert candidates("auto", cpu, "auto", graphs, quantizable=True) == (
        "fp32", "bf16", "int8", "onnx:fp32", "openvino:fp32", "openvino:bf16")
    assert candidates("auto", cpu) == ("fp32", "bf16")  # a teacher that cannot be quantized (generative)
    assert candidates("int8", cpu, quantizable=True) == ("fp32", "int8")
    with pytest.raises(ConfigError, match="int8 is computed on a CPU"):
        candidates("int8", cpu)
    with pytest.raises(ConfigError, match="int8 is computed on a CPU"):
        candidates("int8", torch.device("cuda"), quantizable=True)
    with pytest.raises(ConfigError, match="auto, torch, onnx, openvino"):
        candidates("auto", cpu, "tensorrt")
    with pytest.raises(ConfigError, match="not available here"):
        candidates("auto", cpu, "onnx", ())
    with pytest.raises(ConfigError, match="computes in fp32, not bf16"):
        candidates("bf16", cpu, "onnx", graphs)


@pytest.mark.parametrize(("cap", "native"), [(None, ("bf16",)), ("AVX2", ()), ("avx512_core_vnni", ()),
                                              ("AVX512_CORE_AMX", ("bf16",)), ("ALL", ("bf16",))])
def test_a_process_capped_below_bf16_has_no_native_bf16(monkeypatch, cap, native):
    """A run capped as an AVX2 machine (ONEDNN_MAX_CPU_ISA, docs/cpus.md) on a bf16 CPU chooses as that machine
    would: bf16 is not native there, so "auto" does not time it."""
    monkeypatch.undo()  # the real native_precisions, on a faked CPU
    monkeypatch.setattr(hardware, "cpu_supports_bf16", lambda: True)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if cap is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert hardware.native_precisions("cpu") == native
    assert precision.candidate_computes("auto", torch.device("cpu")) == ("fp32", *native)
    assert hardware.isa_capped_below_bf16({"DNNL_MAX_CPU_ISA": "AVX2"}) and not hardware.isa_capped_below_bf16({})


@pytest.mark.isa
@pytest.mark.parametrize("dtype", ["bf16", "int8"])
@pytest.mark.parametrize("passes", [True, False])
def test_reduced_precision_is_used_only_after_the_check(tiny_cross_encoder, monkeypatch, caplog, passes, dtype):
    judged = []

    def judge(reference, candidate, dtype, tie_share=precision.TIE_SHARE):
        judged.append(len(reference))
        return precision.PrecisionCheck(dtype, 1.0 if passes else 0.5, passes)

    monkeypatch.setattr(precision, "judge_precision", judge)
    queries, docs = mixed_pairs()
    if dtype == "int8" and int8_engine() is None:
        pytest.skip("this torch build has no quantized CPU engine")
    monkeypatch.setattr(precision, "int8_available", lambda device_type: device_type == "cpu")
    teacher = CrossEncoderTeacher(tiny_cross_encoder, max_length=128, dtype=dtype)
    with pytest.raises(RuntimeError, match="settle_precision"):
        teacher.fingerprint()
    with caplog.at_level(logging.WARNING, logger="teachers.precision"):
        scores = teacher.score(queries, docs)
    assert judged == [len(queries)]
    linear = teacher.model.classifier  # a Linear: cast down, or replaced by a dynamic int8 one
    if passes:
        assert teacher.fingerprint()["dtype"] == dtype and not caplog.records
        assert linear.weight().dtype == torch.qint8 if dtype == "int8" else linear.weight.dtype == torch.bfloat16
    else:
        assert teacher.fingerprint()["dtype"] == "fp32" and linear.weight.dtype == torch.float32
        assert f"{dtype} scores do not rank like fp32" in caplog.text
        fp32 = CrossEncoderTeacher(tiny_cross_encoder, max_length=128).score(queries, docs)
        np.testing.assert_array_equal(scores, fp32)


class FakeModel:
    """A model for choose_precision: pair i scores i (plus an error per precision), and scoring
    advances a fake clock by its precision's seconds per pair."""

    def __init__(self, seconds_per_pair: dict[str, float], bad: frozenset[str] = frozenset()) -> None:
        self.cost, self.bad = seconds_per_pair, bad
        self.dtype, self.clock, self.events = "fp32", 0.0, []

    def score(self, queries, docs):
        self.clock += self.cost[self.dtype] * len(queries)
        scores = np.array([float(q[1:]) for q in queries])
        if self.dtype in self.bad:
            return np.random.default_rng(0).permutation(scores)
        return scores + (0.0 if self.dtype == "fp32" else 1e-3)

    def cast(self, dtype):
        assert self.dtype == "fp32", "cast from fp32 weights only"
        self.dtype = dtype
        self.events.append(dtype)

    def restore(self):
        self.dtype = "fp32"
        self.events.append("restore")

    def choose(self, candidates, timed=True, **options):
        queries = [f"q{i}" for i in range(100)]
        return precision.choose_precision(self.score, self.cast, self.restore, candidates, queries, queries, "fake",
                                          timed=timed, timer=lambda: self.clock, **options)


@pytest.mark.parametrize("costs, bad, expected", [
    ({"fp32": 1.0, "bf16": 1.5}, set(), "fp32"),  # slower, though it ranks like fp32
    ({"fp32": 1.0, "bf16": 0.99}, set(), "fp32"),  # within timing noise of fp32
    ({"fp32": 1.0, "bf16": 0.6}, set(), "bf16"),  # faster and ranks like fp32
    ({"fp32": 1.0, "bf16": 0.6}, {"bf16"}, "fp32"),  # faster but ranks unlike fp32
    ({"fp32": 1.0, "fp16": 0.4, "bf16": 0.6}, {"fp16"}, "bf16"),  # the fastest that passes
    ({"fp32": 1.0, "fp16": 0.4, "bf16": 0.6}, set(), "fp16"),
])
def test_auto_keeps_the_fastest_precision_that_ranks_like_fp32(costs, bad, expected):
    model = FakeModel(costs, frozenset(bad))
    choice = model.choose(tuple(costs))
    assert choice.dtype == expected == model.dtype  # the model is left in the chosen precision
    assert model.events.count("restore") == sum(1 for d in model.events[:-1] if d != "restore")
    n = len(choice.index)
    assert n == precision.SAMPLE_PAIRS
    np.testing.assert_array_equal(choice.scores, model.score([f"q{i}" for i in choice.index], []))
    record = choice.to_dict()
    assert record["dtype"] == expected and record["sample_pairs"] == n
    measured = {m["dtype"]: m for m in record["measured"]}
    assert set(measured) == set(costs)
    for dtype, m in measured.items():
        assert m["seconds"] == pytest.approx(costs[dtype] * n)  # timed after the warm-up batch
        assert m["pairs_per_s"] == pytest.approx(1 / costs[dtype], rel=1e-3)
        assert m["passed"] == (dtype not in bad)
    assert measured["fp32"]["spearman"] is None
    json.dumps(record)


@pytest.mark.parametrize("min_run_seconds, expected", [(1e9, "bf16"), (50.0, "openvino:bf16")])
def test_graph_runtimes_are_tried_only_on_runs_long_enough_to_pay_for_their_export(min_run_seconds, expected):
    """100 pairs at 0.6 s each in torch bf16 take 60 s: a graph runtime (exported first) is tried only when that is at
    least the minimum, and then kept only when it measures fastest and ranks like fp32."""
    costs = {"fp32": 1.0, "bf16": 0.6, "onnx:fp32": 1.2, "openvino:fp32": 0.9, "openvino:bf16": 0.5}
    model = FakeModel(costs)
    choice = model.choose(tuple(costs), min_graph_run_seconds=min_run_seconds)
    assert choice.dtype == expected == model.dtype
    record = choice.to_dict()
    tried = [m["dtype"] for m in record["measured"]]
    if expected == "bf16":
        assert tried == ["fp32", "bf16"] and record["skipped"]["computes"] == ["onnx:fp32", "openvino:fp32",
                                                                                "openvino:bf16"]
    else:
        assert tried == list(costs) and "skipped" not in record
        assert all("setup_seconds" in m for m in record["measured"][1:])


def test_explicit_reduced_precision_is_checked_not_timed():
    slow = FakeModel({"fp32": 1.0, "bf16": 2.0})
    assert slow.choose(("fp32", "bf16"), timed=False).dtype == "bf16"  # asked for, so kept though slower
    assert slow.clock == 2 * precision.SAMPLE_PAIRS * 1.5  # no warm-up batches
    bad = FakeModel({"fp32": 1.0, "bf16": 0.5}, frozenset({"bf16"}))
    choice = bad.choose(("fp32", "bf16"), timed=False)
    assert choice.dtype == bad.dtype == "fp32" and choice.measurements[1].seconds is None


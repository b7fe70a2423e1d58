"""distill export's decisions on injected scores and speeds: the fidelity gate, the variants ``--quantize auto``
builds and which it keeps. No graph is built, so each outcome is the same on every CPU."""

from __future__ import annotations

import pytest


class _Scores:
    """A ranker scoring each candidate by ``score(qid, docid)``: the fidelity gate decides on scores the test
    chose, the same on every CPU."""

    def __init__(self, score) -> None:
        self.score = score

    def rerank(self, dataset, candidates):
        import polars as pl

        scores = [self.score(q, d) for q, d in zip(candidates["qid"], candidates["docid"])]
        return candidates.with_columns(pl.Series("score", scores, dtype=pl.Float64))


@pytest.fixture(scope="module")
def gate_sample(tiny_beir):
    """The train split, 30 BM25 candidates a query, and fp32-like scores: judged documents on top, the rest
    spread on a 1e-3 grid by a hash of the pair."""
    import zlib

    from distill.data.beir import load_beir
    from distill.data.bm25 import bm25_run

    dataset = load_beir(tiny_beir, "train")
    judged = {(q, d) for q, d, r in dataset.qrels.select("qid", "docid", "relevance").iter_rows() if r > 0}

    def fp32(qid: str, docid: str) -> float:
        return 10.0 * ((qid, docid) in judged) + zlib.crc32(f"{qid}|{docid}".encode()) % 10_000 / 1_000

    return dataset, bm25_run(dataset, 30).select("qid", "docid"), fp32


@pytest.mark.parametrize("check", ["qrels", "agreement"])
@pytest.mark.parametrize(("case", "passes"), [("rounding", True), ("reversed", False), ("nan", False)])
def test_the_fidelity_gate_keeps_a_rounded_export_and_refuses_a_reordered_one(gate_sample, check, case, passes):
    """Rounding (scores moved by 1e-4, a tenth of the grid) keeps every order and passes; an export that
    reverses the order, or scores NaN, fails: on qrels by nDCG@10, on agreement by Kendall's tau."""
    import math
    import zlib

    from students.export import ExportConfig, check_fidelity

    dataset, candidates, fp32 = gate_sample
    exported = {
        "rounding": lambda q, d: fp32(q, d) + 1e-4 * math.sin(zlib.crc32(d.encode())),
        "reversed": lambda q, d: -fp32(q, d),
        "nan": lambda q, d: math.nan,
    }[case]
    result = check_fidelity(_Scores(exported), _Scores(fp32), dataset, candidates, ExportConfig(check=check))
    assert result["mode"] == check and result["passed"] == passes, result
    if passes:
        assert result["overlap@10"] == 1.0 and result["kendall_tau"] == pytest.approx(1.0)
    else:
        expected = "NaN or infinite" if case == "nan" else "nDCG@10" if check == "qrels" else "Kendall tau"
        assert expected in result["reason"], result


def test_auto_builds_every_variant_of_the_format_asked_for():
    from students.export_variants import candidate_variants

    assert candidate_variants(None, "auto") == ["openvino", "openvino_int8", "onnx", "onnx_int8"]
    assert candidate_variants("onnx", "auto") == ["onnx", "onnx_int8"]
    assert candidate_variants("openvino", "auto") == ["openvino", "openvino_int8"]
    assert candidate_variants(None, None) == ["onnx"], "no --format, no auto: ONNX as before"
    assert candidate_variants("openvino", "int8") == ["openvino_int8"]


def _row(variant: str, ms: float, passed: bool = True) -> dict:
    return {"variant": variant, "ms_per_query": ms, "speedup": 100.0 / ms, "passed": passed,
            **({} if passed else {"reason": "top-10 overlap 0.5 < 0.9"})}


def test_auto_keeps_the_fastest_passing_variant_and_never_one_slower_than_torch():
    from students.export_variants import choose_variant

    rows = [_row("openvino", 80), _row("openvino_int8", 20, passed=False), _row("onnx", 120), _row("onnx_int8", 50)]
    kept, why = choose_variant(rows, 100.0, auto=True, baseline="torch fp32")
    assert kept == "onnx_int8" and "2.00x torch fp32" in why, "the fastest one failed its check: the next"
    slow = [_row("onnx", 120), _row("onnx_int8", 110), _row("openvino_int8", 20, passed=False)]
    kept, why = choose_variant(slow, 100.0, auto=True, baseline="torch fp32")
    assert kept == "onnx_int8" and "no variant that passes the fidelity check is faster than torch" in why
    kept, why = choose_variant([_row("onnx", 120, passed=False)], 100.0, auto=True, baseline="torch fp32")
    assert kept is None and "onnx: top-10 overlap" in why
    kept, why = choose_variant([_row("onnx", 120)], 100.0, auto=False, baseline="torch fp32")
    assert kept == "onnx" and why.startswith("asked for"), "an explicit export is kept however slow"

"""scripts/bench_scale.py: its synthetic corpus is a seeded, loadable BEIR folder, and a step's record is its
own process's peak memory."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from distill.data.beir import load_beir

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(SCRIPTS))  # the script imports its sibling _common
    try:
        spec = importlib.util.spec_from_file_location("bench_scale", SCRIPTS / "bench_scale.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(SCRIPTS))


def test_the_corpus_is_seeded_and_loads_as_beir(bench, tmp_path):
    shape = bench.make_corpus(tmp_path / "a", pairs=3000, k=10, seed=3)
    bench.make_corpus(tmp_path / "b", pairs=3000, k=10, seed=3)
    bench.make_corpus(tmp_path / "c", pairs=3000, k=10, seed=4)
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/train.tsv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "queries.jsonl").read_bytes() != (tmp_path / "c" / "queries.jsonl").read_bytes()
    train, test = load_beir(tmp_path / "a", "train"), load_beir(tmp_path / "a", "test")
    assert train.queries.height == shape["train_queries"] == 300 and test.queries.height == shape["test_queries"]
    assert train.corpus.height == shape["documents"]
    assert set(train.queries["qid"]).isdisjoint(test.queries["qid"])


def _measured(argv: list[str], result: Path) -> dict:
    """``bench_scale.measure(argv, result)`` called from a fresh, small process, as the script calls it: a
    child's peak RSS counts its parent's at the spawn (Linux keeps the high-water mark across exec), and
    pytest's is larger than what is measured here."""
    code = (f"import sys, json; sys.path.insert(0, {str(SCRIPTS)!r}); import bench_scale; "
            f"print(json.dumps(bench_scale.measure({argv!r}, __import__('pathlib').Path({str(result)!r}))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr)
    return json.loads(done.stdout.splitlines()[-1])


def test_a_step_records_its_own_peak_memory(tmp_path):
    big = [sys.executable, "-c", "import numpy; a = numpy.ones(80 * 2**20 // 8); print(a.sum())"]
    first = _measured(big, tmp_path / "big.json")
    second = _measured([sys.executable, "-c", "print(1)"], tmp_path / "small.json")
    assert first["peak_rss_mb"] >= 80 > second["peak_rss_mb"]
    assert json.loads((tmp_path / "big.json").read_text()) == first and first["cpu_s"] >= 0
    with pytest.raises(SystemExit, match="step failed"):
        _measured([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()

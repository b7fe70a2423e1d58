"""`distill fuse-teacher` with several teacher caches: an ensemble whose weights (one per teacher, BM25's too)
are chosen on validation, each teacher alone and the ensemble reported; one cache fuses exactly as before."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import torch
from tiny import run_cli

from distill.cache.store import TeacherCache, read_scores
from distill.core.errors import ConfigError
from distill.core.manifest import frame_hash
from distill.core.schema import DOCID, QID, SCORE
from distill.data.beir import load_beir
from distill.data.bm25 import bm25_run
from distill.data.runs import write_run
from teachers.fusion import MAX_WEIGHTINGS, fuse_teacher, weight_grid

torch.set_num_threads(1)


def planted_cache(folder: Path, scores: pl.DataFrame, corpus: pl.DataFrame) -> Path:
    TeacherCache.create_or_open(folder, {"kind": "planted", "name": folder.name}, frame_hash(corpus)).append(
        scores.with_columns(pl.col(SCORE).cast(pl.Float32)))
    return folder


@pytest.mark.parametrize("as_list", [False, True])
def test_one_teacher_fuses_exactly_as_the_single_teacher_fusion_did(as_list, tiny_beir, tmp_path):
    """The figures the single-teacher code (before ensembles) gave for this teacher, run, split and step."""
    dataset = load_beir(tiny_beir, "test")
    run = bm25_run(dataset, 10)
    noisy = run.join(dataset.qrels, on=[QID, DOCID], how="left").with_row_index("i").select(
        QID, DOCID, (pl.col("relevance").fill_null(0) + (pl.col("i") * 7 % 5) * 0.6).alias(SCORE))
    cache = planted_cache(tmp_path / "c", noisy, dataset.corpus)
    chosen = fuse_teacher(tmp_path / "f", [cache] if as_list else cache, [run], dataset.qrels, step=0.25)
    assert chosen.weights == {"teacher": 0.75, "bm25": 0.25}
    assert chosen.value == pytest.approx(0.8256155962730429, abs=1e-12)
    assert chosen.alone == pytest.approx({"teacher": 0.7791552222980318, "bm25": 0.6558327345385606}, abs=1e-12)
    fused, manifest = read_scores(tmp_path / "f")
    assert manifest["teacher"] == {
        "chosen_on": {"alone": chosen.alone, "metric": "nDCG@10", "queries": 8, "value": chosen.value},
        "components": {"teacher": {"kind": "planted", "name": "c"}}, "kind": "fused",
        "normalization": "zscore-per-query", "weights": {"bm25": 0.25, "teacher": 0.75}}
    fused = fused.sort(QID, DOCID)
    assert fused.height == 80
    assert float(fused[SCORE].abs().sum()) == pytest.approx(52.3156, abs=1e-4)
    assert float((fused[SCORE] * pl.Series(range(fused.height))).sum()) == pytest.approx(-25.0575, abs=1e-4)
    assert fused.head(2).select(QID, DOCID).rows() == [("q0_0", "d0_0"), ("q0_0", "d0_1")]
    assert fused.head(2)[SCORE].to_list() == pytest.approx([1.5154838, -0.3731131], abs=1e-6)


def half_knowing(run: pl.DataFrame, qrels: pl.DataFrame, half: int) -> pl.DataFrame:
    """A teacher that knows every other judged relevant pair of ``run`` (``half`` 0 or 1): those get their
    grade plus 1, every other candidate 0."""
    relevant = qrels.filter(pl.col("relevance") > 0).sort(QID, DOCID).with_row_index("i").filter(
        pl.col("i") % 2 == half)
    return run.join(relevant, on=[QID, DOCID], how="left").select(
        QID, DOCID, (pl.col("relevance").fill_null(-1) + 1).cast(pl.Float32).alias(SCORE))


def test_two_half_knowing_teachers_fuse_into_an_ensemble_better_than_each(tiny_beir, tmp_path, capsys):
    dataset = load_beir(tiny_beir, "train")
    run = bm25_run(dataset, 10)
    write_run(run, tmp_path / "bm25.trec", tag="bm25")
    first = planted_cache(tmp_path / "scored", half_knowing(run, dataset.qrels, 0), dataset.corpus)
    other = half_knowing(run, dataset.qrels, 1)  # the second comes from elsewhere: imported
    (tmp_path / "other.tsv").write_text("".join(f"{q}\t{d}\t{s}\n" for q, d, s in other.iter_rows()))
    code, _, err = run_cli(["cache", "import", tmp_path / "other.tsv", "--data", tiny_beir, "--teacher-name", "api",
                            "--out", tmp_path / "imported"], capsys)
    assert code == 0, err
    code, out, err = run_cli(["fuse-teacher", "--cache", first, "--cache", tmp_path / "imported", "--data", tiny_beir,
                              "--run", tmp_path / "bm25.trec", "--valid-split", "train", "--step", 0.25,
                              "--out", tmp_path / "fused"], capsys)
    assert code == 0, err
    fused, manifest = read_scores(tmp_path / "fused")
    fingerprint = manifest["teacher"]
    assert fingerprint["components"]["teacher"]["name"] == "scored"
    assert fingerprint["components"]["teacher_2"]["name"] == "api"
    assert fingerprint["components"]["bm25"]["kind"] == "first-stage"
    weights, alone, value = fingerprint["weights"], fingerprint["chosen_on"]["alone"], fingerprint["chosen_on"]["value"]
    assert set(weights) == {"teacher", "teacher_2", "bm25"} and sum(weights.values()) == pytest.approx(1)
    assert weights["teacher"] > 0 and weights["teacher_2"] > 0
    assert value > max(alone["teacher"], alone["teacher_2"], alone["bm25"])
    assert fused.height == run.height
    for name in ("teacher", "teacher_2", "bm25", "fused", f"{alone['teacher_2']:.4f}", f"{value:.4f}"):
        assert name in out, (name, out)
    code, _, err = run_cli(["train-student", "--student", "lightgbm", "--cache", tmp_path / "fused", "--data",
                            tiny_beir, "--split", "train", "--out", tmp_path / "student"], capsys)
    assert code == 0, err
    assert (tmp_path / "student" / "distill.json").exists()


def test_the_grid_is_bounded_and_a_scorer_may_not_take_a_teachers_name(tiny_beir, tmp_path):
    grid = weight_grid(["a", "b", "c"], 0.5)
    assert len(grid) == 6 and all(sum(w.values()) == pytest.approx(1) for w in grid)
    with pytest.raises(ConfigError, match=f"more than {MAX_WEIGHTINGS}: use --step 0.2"):
        weight_grid([f"t{i}" for i in range(8)], 0.1)
    dataset = load_beir(tiny_beir, "test")
    run = bm25_run(dataset, 10)
    cache = planted_cache(tmp_path / "c", run, dataset.corpus)
    with pytest.raises(ConfigError, match="teacher_2"):
        fuse_teacher(tmp_path / "f", [cache, cache], [run], dataset.qrels, others={"teacher_2": run})

"""train-teacher: fine-tuning on qrels with BM25 negatives, validation against BM25, weak titles."""

from __future__ import annotations

import json
import logging

import polars as pl
import pytest
import torch
from tiny import run_cli

from distill.core.errors import ConfigError
from distill.data.beir import load_beir
from teachers.train import TeacherTrainConfig, bm25_groups, summarize_validation, weak_title_dataset

torch.set_num_threads(1)


@pytest.mark.parametrize(("objective", "kind"), [("listwise", "listwise_ce"), ("listnet", "listnet")])
def test_cli_trains_a_teacher_with_validation_metrics_per_epoch(objective, kind, tiny_beir, tiny_cross_encoder,
                                                                 tmp_path, capsys):
    from sentence_transformers.cross_encoder import CrossEncoder

    out = tmp_path / "teacher"
    code, _, err = run_cli(["train-teacher", "--data", tiny_beir, "--split", "train", "--init", tiny_cross_encoder,
                            "--out", out, "--quick", "--epochs", "2", "--max-length", "64", "--objective", objective,
                            "--valid-fraction", "0.25", "--weak-titles", "5"], capsys)
    assert code == 0, err
    manifest = json.loads((out / "distill.json").read_text())
    assert manifest["kind"] == "teacher"
    validation = manifest["validation"]
    assert [round(e["epoch"]) for e in validation["epochs"]] == [1, 2]
    assert all(0.0 <= e["nDCG@10"] <= 1.0 for e in validation["epochs"])
    assert validation["best"] == max(e["nDCG@10"] for e in validation["epochs"])
    assert 0.0 < validation["bm25"] <= 1.0
    assert validation["beats_bm25"] == (validation["best"] > validation["bm25"])
    assert manifest["data"]["valid_queries"] == 4
    assert manifest["loss"] == {"name": "HardLabels", "kind": kind}
    assert manifest["config"]["negatives"] == 3 and manifest["config"]["train"]["epochs"] == 2
    assert CrossEncoder(str(out)).num_labels == 1


def test_teacher_settings_take_the_trainers_defaults_where_a_teacher_does_not_differ():
    from distill.training.config import TrainConfig

    teacher, trainers = TeacherTrainConfig().train, TrainConfig()
    assert (teacher.seed, teacher.precision, teacher.max_length) == (trainers.seed, trainers.precision,
                                                                     trainers.max_length)
    assert (teacher.epochs, teacher.lr, teacher.batch_size, teacher.valid_fraction) == (2.0, 5e-5, 4, 0.1)


def test_groups_pair_each_positive_with_bm25_negatives(tiny_beir):
    dataset = load_beir(tiny_beir, "train")
    groups = bm25_groups(dataset, TeacherTrainConfig(negatives=3, negatives_from_top=10))
    assert len(groups) == dataset.queries.height
    relevant = set(dataset.qrels.filter(pl.col("relevance") > 0).select("qid", "docid").iter_rows())
    for group in groups:
        assert len(group) == 4 and group.labels[0] > 0
        assert not any((group.qid, d) in relevant for d in group.docids[1:])


def test_weak_titles_query_their_own_body(tiny_beir):
    dataset = load_beir(tiny_beir, "train")
    weak = weak_title_dataset(dataset, 6, seed=0)
    assert weak.queries.height == 6
    titles = dict(zip(dataset.corpus["docid"], dataset.corpus["title"]))
    for qid, docid in weak.qrels.select("qid", "docid").iter_rows():
        assert qid == f"title:{docid}"
        assert weak.query_texts([qid]) == [titles[docid]]
    assert set(weak.corpus["title"]) == {""}  # bodies only: the title must not give the answer away
    assert weak_title_dataset(dataset, 6, seed=0).qrels.equals(weak.qrels)


def test_a_teacher_that_does_not_beat_bm25_is_flagged(caplog):
    history = [{"epoch": 1.0, "step": 3, "eval_nDCG@10": 0.40, "eval_runtime": 1.0},
               {"epoch": 1.5, "step": 4, "loss": 2.0}, {"epoch": 2.0, "step": 6, "eval_nDCG@10": 0.45}]
    with caplog.at_level(logging.WARNING, logger="teachers.train"):
        summary = summarize_validation(history, bm25=0.5)
    assert summary["epochs"] == [{"epoch": 1.0, "step": 3, "nDCG@10": 0.40}, {"epoch": 2.0, "step": 6, "nDCG@10": 0.45}]
    assert summary["best"] == 0.45 and summary["beats_bm25"] is False
    assert "does NOT beat BM25" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="teachers.train"):
        assert summarize_validation(history[:1], bm25=0.3)["beats_bm25"] is True
    assert "BM25" not in caplog.text


def test_a_resumed_run_reports_every_epoch(tiny_beir, tiny_cross_encoder, tmp_path, capsys):
    out = tmp_path / "teacher"
    common = ["train-teacher", "--data", tiny_beir, "--init", tiny_cross_encoder, "--out", out, "--quick",
              "--max-length", "64", "--valid-fraction", "0.25"]
    assert run_cli([*common, "--epochs", "1"], capsys)[0] == 0
    code, _, err = run_cli([*common, "--epochs", "2", "--resume"], capsys)
    assert code == 0, err
    epochs = json.loads((out / "distill.json").read_text())["validation"]["epochs"]
    assert [round(e["epoch"]) for e in epochs] == [1, 2]


def test_config_refuses_impossible_settings():
    with pytest.raises(ConfigError, match="negatives"):
        TeacherTrainConfig(negatives=10, negatives_from_top=10)
    with pytest.raises(ConfigError, match="objective"):
        TeacherTrainConfig(objective="pairwise")


def test_train_teacher_stops_once_validation_stops_improving(tiny_beir, tiny_cross_encoder, tmp_path, monkeypatch):
    from teachers.train import RerankEvaluator, train_teacher

    values = iter([0.5, 0.4, 0.3, 0.2])  # validation only falls after the first epoch
    monkeypatch.setattr(RerankEvaluator, "__call__", lambda self, model, *a, **k: {"nDCG@10": next(values)})
    from distill.training.trainer import TrainConfig

    config = TeacherTrainConfig(negatives=3, negatives_from_top=10, valid_k=10, patience=1,
                                train=TrainConfig(epochs=4, lr=1e-4, batch_size=4, max_length=48, valid_fraction=0.25))
    out = train_teacher(load_beir(tiny_beir, "train"), tmp_path / "t", init=str(tiny_cross_encoder), config=config)
    epochs = json.loads((out / "distill.json").read_text())["validation"]["epochs"]
    assert [round(e["epoch"]) for e in epochs] == [1, 2]  # stopped at the cap's half: patience 1
    assert [e["nDCG@10"] for e in epochs] == [0.5, 0.4]
    with pytest.raises(ConfigError, match="patience"):
        TeacherTrainConfig(patience=0)

"""Neural students: they learn a planted teacher signal, save loadable folders, and rank alike
with and without precomputed document embeddings."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from scipy.stats import kendalltau
from tiny import run_cli

from distill.core.errors import ConfigError
from distill.core.schema import DOCID, QID, SCORE
from distill.data.beir import Dataset, load_beir
from distill.data.bm25 import bm25_run
from distill.training.groups import GroupConfig
from distill.training.trainer import TrainConfig

torch.set_num_threads(1)

STOP = {"what", "about"}


@pytest.fixture(scope="module")
def word_cross_encoder(tiny_cross_encoder) -> Path:
    return tiny_cross_encoder


@pytest.fixture(scope="module")
def word_bi_encoder(tiny_bi_encoder) -> Path:
    return tiny_bi_encoder


@pytest.fixture(scope="module")
def planted(tiny_beir) -> tuple[Dataset, pl.DataFrame]:
    """The train split and teacher scores planted on its BM25 top-10: how many of the query's
    content words the document contains (an easy signal a tiny model can pick up)."""
    dataset = load_beir(tiny_beir, "train")
    run = bm25_run(dataset, 10).select(QID, DOCID)
    queries = dict(zip(dataset.queries[QID], dataset.queries["text"]))
    docs = dataset.doc_texts(run[DOCID])
    scores = [float(sum(w in set(queries[q].split()) - STOP for w in doc.split()))
              for q, doc in zip(run[QID], docs)]
    return dataset, run.with_columns(pl.Series(SCORE, scores, dtype=pl.Float32))


def mean_tau(teacher: pl.DataFrame, student: pl.DataFrame) -> float:
    """Mean over queries of Kendall's tau between teacher and student scores (0 where undefined)."""
    joined = teacher.join(student.rename({SCORE: "student"}), on=[QID, DOCID])
    taus = [kendalltau(g[SCORE], g["student"]).statistic for _, g in joined.group_by(QID)]
    return float(np.mean([0.0 if math.isnan(t) else t for t in taus]))


def cross_encoder_scores(path: Path, dataset: Dataset, run: pl.DataFrame) -> pl.DataFrame:
    from sentence_transformers.cross_encoder import CrossEncoder

    model = CrossEncoder(str(path))
    pairs = list(zip(dataset.query_texts(run[QID]), dataset.doc_texts(run[DOCID])))
    logits = model.predict(pairs, activation_fn=torch.nn.Identity(), show_progress_bar=False)
    return run.select(QID, DOCID).with_columns(pl.Series(SCORE, logits.astype(np.float64)))


def quick(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(epochs=10, lr=1e-3, batch_size=4, max_length=64, logging_steps=1000,
                checkpoints_dir=str(tmp_path / "ckpt"))
    return TrainConfig(**{**base, **kw})


def test_cross_encoder_student_learns_the_planted_signal(planted, word_cross_encoder, tmp_path):
    from students.cross_encoder import train_cross_encoder_student

    dataset, scores = planted
    before = mean_tau(scores, cross_encoder_scores(word_cross_encoder, dataset, scores))
    out = train_cross_encoder_student(
        dataset, scores, tmp_path / "student", init=str(word_cross_encoder),
        group_config=GroupConfig(mode="listwise", listwise_k=10), train_config=quick(tmp_path),
        loss_name="KLDiv", teacher_fingerprint={"kind": "planted"},
    )
    after = mean_tau(scores, cross_encoder_scores(out, dataset, scores))
    assert after > before + 0.2 and after > 0.3, (before, after)
    manifest = json.loads((out / "distill.json").read_text())
    assert manifest["kind"] == "cross-encoder-student"
    assert manifest["teacher"] == {"kind": "planted"}
    assert manifest["config"]["loss"]["name"] == "KLDiv"
    assert manifest["data"]["train_queries"] == dataset.queries.height
    assert any(p.name.startswith("checkpoint-") for p in (tmp_path / "ckpt").iterdir())
    from distill.rankers.loading import load_ranker
    from students.cross_encoder import CrossEncoderStudentRanker

    assert isinstance(load_ranker(str(out)), CrossEncoderStudentRanker)  # its own class, scored as its teacher


def test_bi_encoder_student_learns_and_ranks_the_same_with_or_without_prepare(planted, word_bi_encoder, tmp_path):
    from sentence_transformers import SentenceTransformer

    from students.bi_encoder import BiEncoderRanker, train_bi_encoder_student

    dataset, scores = planted
    before = mean_tau(scores, BiEncoderRanker(word_bi_encoder).rerank(dataset, scores))
    out = train_bi_encoder_student(
        dataset, scores, tmp_path / "student", init=str(word_bi_encoder),
        group_config=GroupConfig(mode="listwise", listwise_k=10), train_config=quick(tmp_path),
        loss_name="KLDiv",
    )
    assert isinstance(SentenceTransformer(str(out)), SentenceTransformer)
    assert json.loads((out / "distill.json").read_text())["kind"] == "bi-encoder-student"

    prepared = BiEncoderRanker(out)
    prepared.prepare(dataset)
    with_index = prepared.rerank(dataset, scores)
    on_the_fly = BiEncoderRanker(out, precompute=False)
    on_the_fly.prepare(dataset)  # a no-op without precompute
    per_call = on_the_fly.rerank(dataset, scores)
    assert on_the_fly._doc_embeddings is None and prepared._doc_embeddings is not None
    assert with_index.select(QID, DOCID).equals(scores.select(QID, DOCID))
    joined = with_index.join(per_call, on=[QID, DOCID], suffix="_call")
    assert joined.height == scores.height
    np.testing.assert_allclose(joined[SCORE].to_numpy(), joined[f"{SCORE}_call"].to_numpy(), atol=1e-5)

    after = mean_tau(scores, with_index)
    assert after > before + 0.2 and after > 0.3, (before, after)


def test_bi_encoders_of_one_folder_embed_a_corpus_once(planted, word_bi_encoder, monkeypatch):
    import os

    from students.bi_encoder import BiEncoderRanker

    dataset, _ = planted
    first = BiEncoderRanker(word_bi_encoder)
    first.prepare(dataset)
    second = BiEncoderRanker(word_bi_encoder)
    monkeypatch.setattr(second, "_encode", lambda texts: pytest.fail("the corpus was embedded twice"))
    second.prepare(dataset)
    assert second._doc_embeddings is first._doc_embeddings
    weights = next(Path(word_bi_encoder).rglob("*.safetensors"))
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # the folder was retrained
    third = BiEncoderRanker(word_bi_encoder)
    third.prepare(dataset)
    assert third._doc_embeddings is not first._doc_embeddings


def test_truncated_init_copies_the_teachers_first_layers(tiny_cross_encoder):
    from sentence_transformers.cross_encoder import CrossEncoder

    from students.cross_encoder import init_cross_encoder

    teacher = CrossEncoder(str(tiny_cross_encoder)).model.state_dict()
    student = init_cross_encoder(str(tiny_cross_encoder), layers=1)
    assert student.model.config.num_hidden_layers == 1
    weights = student.model.state_dict()
    assert not any(".layer.1." in key for key in weights)
    for prefix in ("bert.embeddings.", "bert.encoder.layer.0.", "bert.pooler.", "classifier."):
        keys = [k for k in weights if k.startswith(prefix)]
        assert keys, prefix
        for key in keys:
            assert torch.equal(weights[key], teacher[key]), key
    with pytest.raises(ConfigError, match="between 1 and 1"):
        init_cross_encoder(str(tiny_cross_encoder), layers=2)


def test_spread_init_copies_evenly_spaced_layers_ending_with_the_last(tiny_cross_encoder):
    from sentence_transformers.cross_encoder import CrossEncoder

    from students.cross_encoder import init_cross_encoder, teacher_layers

    assert teacher_layers(6, 2, "spread") == [2, 5] and teacher_layers(6, 3, "spread") == [1, 3, 5]
    assert teacher_layers(12, 4, "spread") == [2, 5, 8, 11] and teacher_layers(6, 2) == [0, 1]
    teacher = CrossEncoder(str(tiny_cross_encoder)).model.state_dict()
    student = init_cross_encoder(str(tiny_cross_encoder), layers=1, choice="spread").model.state_dict()
    assert set(student) == {k for k in teacher if ".layer.1." not in k}
    for key, value in student.items():
        assert torch.equal(value, teacher[key.replace(".layer.0.", ".layer.1.")]), key
    with pytest.raises(ConfigError, match="'first' or 'spread'"):
        teacher_layers(6, 2, "middle")


def _cache(folder: Path, dataset: Dataset, scores: pl.DataFrame, model: Path) -> Path:
    from distill.cache.store import TeacherCache
    from distill.core.manifest import frame_hash

    cache = TeacherCache.create_or_open(folder, {"kind": "planted", "model": str(model)},
                                        frame_hash(dataset.corpus))
    cache.append(scores)
    return folder


def test_cli_trains_a_truncated_teacher_student_from_a_cache(planted, tiny_beir, tiny_cross_encoder, tmp_path,
                                                             capsys):
    from sentence_transformers.cross_encoder import CrossEncoder

    dataset, scores = planted
    cache = _cache(tmp_path / "cache", dataset, scores, tiny_cross_encoder)
    args = ["train-student", "--student", "cross-encoder", "--cache", cache, "--data", tiny_beir,
            "--split", "train", "--loss", "MarginMSE", "--epochs", "1", "--max-length", "64",
            "--batch-size", "8"]
    code, _, err = run_cli([*args, "--init-from-teacher", "--layers", "1", "--negatives", "3",
                            "--checkpoint-steps", "1", "--out", tmp_path / "s"], capsys)
    assert code == 0, err
    assert (tmp_path / "s.checkpoints" / "checkpoint-1").is_dir()  # a crash after step 1 would resume from here
    assert CrossEncoder(str(tmp_path / "s")).model.config.num_hidden_layers == 1
    manifest = json.loads((tmp_path / "s" / "distill.json").read_text())
    assert manifest["config"]["init"] == str(tiny_cross_encoder)
    assert manifest["config"]["init_from_teacher_layers"] == 1
    assert manifest["teacher"]["model"] == str(tiny_cross_encoder)

    code, _, err = run_cli([*args, "--init", tiny_cross_encoder, "--negatives", "0", "--out", tmp_path / "x"],
                           capsys)
    assert code == 2 and "MarginMSE needs at least one negative" in err
    assert not (tmp_path / "x").exists()


def test_resume_without_a_checkpoint_is_a_config_error(planted, tiny_cross_encoder, tmp_path):
    from students.cross_encoder import train_cross_encoder_student

    dataset, scores = planted
    with pytest.raises(ConfigError, match="cannot resume"):
        train_cross_encoder_student(
            dataset, scores, tmp_path / "s", init=str(tiny_cross_encoder), group_config=GroupConfig(n_negatives=2),
            train_config=quick(tmp_path, epochs=1, resume_from_checkpoint=True), loss_name="MarginMSE",
        )
    assert not (tmp_path / "s").exists()


def test_students_are_types_looked_up_by_kind_and_configured_by_their_own_configs():
    from distill.core.registry import STUDENTS
    from students.bi_encoder import BiEncoderConfig, BiEncoderStudent
    from students.cross_encoder import CrossEncoderConfig, CrossEncoderStudent
    from students.lightgbm import LightGBMConfig
    from students.lightgbm_student import LightGBMStudent

    assert {"cross-encoder", "bi-encoder", "lightgbm"} <= set(STUDENTS.kinds())
    for kind, student_type in [("cross-encoder", CrossEncoderStudent), ("bi-encoder", BiEncoderStudent),
                               ("lightgbm", LightGBMStudent)]:
        assert STUDENTS.get(kind) is student_type and student_type.kind == kind
        assert student_type.output_kind == f"{kind}-student"
    with pytest.raises(ConfigError, match="unknown student kind 'tree'"):
        STUDENTS.get("tree", field="student")
    # flat options: each kind takes its own and leaves the others; None keeps each config's own default
    options = {"layers": 2, "similarity": "dot", "objective": "regression", "lr": None, "valid_fraction": None,
               "n_negatives": 3}
    cross = CrossEncoderStudent.from_options(options)
    assert cross.config == CrossEncoderConfig(layers=2) and cross.group_config.n_negatives == 3
    assert cross.train_config == TrainConfig() and not cross.starts_as_init
    assert BiEncoderStudent.from_options(options).config == BiEncoderConfig(similarity="dot")
    lightgbm = LightGBMStudent.from_options(options).config
    assert lightgbm == LightGBMConfig(objective="regression")  # learning rate 0.05 and valid fraction 0.2: its own
    assert LightGBMStudent.from_options({"lr": 0.1}).config.learning_rate == 0.1
    given = GroupConfig(mode="listwise")
    assert CrossEncoderStudent.from_options(options, configs=(given,)).group_config is given
    with pytest.raises(ConfigError, match="similarity"):
        BiEncoderConfig(similarity="euclid")


def test_train_student_options_default_to_their_configs_and_group_by_kind():
    import typer
    from typer.testing import CliRunner

    from distill.app.cli import app, register_commands
    from students.bi_encoder import BiEncoderConfig
    from students.lightgbm import LightGBMConfig

    register_commands()
    params = {p.name: p for p in typer.main.get_command(app).commands["train-student"].params}
    group, train, lightgbm = GroupConfig(), TrainConfig(), LightGBMConfig()
    assert (params["negatives"].default, params["fn_margin"].default) == (group.n_negatives, None)
    assert (params["batch_size"].default, params["seed"].default) == (train.batch_size, train.seed)
    assert params["scale"].default == BiEncoderConfig().scale and params["n_estimators"].default == 500
    assert params["lr"].default is None and f"lightgbm {lightgbm.learning_rate:g}" in params["lr"].help
    assert params["valid_fraction"].default is None and params["valid_fraction"].help.endswith(
        f"[neural {train.valid_fraction:g}; lightgbm {lightgbm.valid_fraction:g}].")
    # an option named otherwise than its field sets that field (the names come from the fields' metadata)
    from distill.app.student_tasks import TRAINING_OPTIONS

    assert {name: TRAINING_OPTIONS[name] for name in ("negatives", "fn_margin", "checkpoint_steps", "seed")} == {
        "negatives": "n_negatives", "fn_margin": "false_negative_margin", "checkpoint_steps": "eval_steps",
        "seed": "seed"}
    shown = CliRunner().invoke(app, ["train-student", "--help"], terminal_width=3000, env={"COLUMNS": "3000"}).output
    for panel, option in [("Cross-encoder", "--layer-choice"), ("Bi-encoder", "--similarity"),
                          ("LightGBM", "--num-leaves")]:
        assert option in shown.split(f"─ {panel} ")[1].split("╰")[0], panel

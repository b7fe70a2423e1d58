"""The default recipe's pieces: unjudged queries end to end, pseudo-queries, rounds that resume and keep
the best, collapse detection, and temperatures from the teacher's score scale."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl
import pytest
import torch
from test_students import planted  # noqa: F401  (fixture)
from tiny import counting_loss, run_cli

from distill.core.errors import InputError
from distill.core.schema import DOCID, QID, SCORE
from distill.data.beir import load_beir
from distill.data.bm25 import bm25_run
from distill.training.groups import GroupConfig
from distill.training.trainer import TrainConfig
from students.validation import StudentCollapseError, Validation, ValidationResult, check_collapse

torch.set_num_threads(1)


def _tiny_train(tmp_path: Path, **kw) -> TrainConfig:
    return TrainConfig(**{**dict(epochs=1, lr=1e-3, batch_size=4, max_length=48, logging_steps=1000), **kw})


def test_a_queries_file_without_qrels_goes_through_candidates_scoring_and_training(tiny_beir, tiny_cross_encoder,
                                                                                  tmp_path, capsys):
    queries = tmp_path / "log.tsv"
    queries.write_text("qid\ttext\nu1\talpha beta\nu2\tgamma delta what\nu3\tepsilon\n")
    run, cache = tmp_path / "u.trec", tmp_path / "cache"
    code, _, err = run_cli(["candidates", "--data", tiny_beir, "--queries", queries, "--k", 6, "--out", run], capsys)
    assert code == 0, err
    assert sorted(set(line.split()[0] for line in run.read_text().splitlines())) == ["u1", "u2", "u3"]
    code, _, err = run_cli(["score-teacher", "--teacher", tiny_cross_encoder, "--data", tiny_beir, "--queries",
                            queries, "--run", run, "--cache", cache, "--dtype", "fp32"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["train-student", "--student", "cross-encoder", "--cache", cache, "--data", tiny_beir,
                            "--queries", queries, "--init-from-teacher", "--layers", 1, "--loss", "MarginMSE",
                            "--negatives", 3, "--max-length", 48, "--batch-size", 2, "--out", tmp_path / "s"], capsys)
    assert code == 0, err
    manifest = json.loads((tmp_path / "s" / "distill.json").read_text())
    assert manifest["data"]["train_queries"] == 3 and manifest["data"]["split"] == "queries:log"


def test_a_queries_file_joins_a_split_and_bad_lines_are_named(tiny_beir, tmp_path):
    from distill.data.querysets import load_training_queries

    path = tmp_path / "q.jsonl"
    path.write_text('{"_id": "u1", "text": "alpha"}\n')
    both = load_training_queries(tiny_beir, "train", path)
    assert both.queries.height == load_beir(tiny_beir, "train").queries.height + 1
    assert both.qrels.height == load_beir(tiny_beir, "train").qrels.height  # u1 has no judgement
    bad = tmp_path / "bad.tsv"
    bad.write_text("u1\talpha\nu2\n")
    with pytest.raises(InputError, match="bad.tsv:2.*2 tab-separated"):
        load_training_queries(tiny_beir, None, bad)


def test_pseudo_queries_are_deterministic_and_cover_title_less_corpora(tmp_path, capsys):
    from distill.core.schema import CORPUS_SCHEMA
    from distill.data.querysets import pseudo_queries

    corpus = pl.DataFrame({"docid": ["b", "a", "c", "d"], "title": ["Coffee and sleep", "", "coffee AND sleep", ""],
                           "text": ["Coffee keeps you up. More.", "Tea calms the nerves! Then sleep.",
                                    "Other text.", "Tea calms the nerves! Again."]}, schema=CORPUS_SCHEMA)
    auto = pseudo_queries(corpus)
    assert auto.rows() == [("sent:a", "Tea calms the nerves!"), ("title:b", "Coffee and sleep")]  # repeats once
    assert pseudo_queries(corpus.reverse()).equals(auto)  # file order does not matter
    idf = pseudo_queries(corpus, "idf", idf_terms=2)
    assert idf.equals(pseudo_queries(corpus, "idf", idf_terms=2)) and idf.height == 4
    assert pseudo_queries(corpus, "first-sentence", max_queries=2, seed=1).equals(
        pseudo_queries(corpus, "first-sentence", max_queries=2, seed=1))


def _digest(folder: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.glob("*.safetensors")))).hexdigest()


def test_rounds_resume_mid_round_and_keep_the_best_round(planted, tiny_cross_encoder, tmp_path,  # noqa: F811
                                                         monkeypatch):
    from students.train import RoundsConfig, train_student

    dataset, scores = planted
    values = {"round-1": 0.3, "round-2": 0.7, "round-3": 0.5}  # validation planted: round 2 is best
    monkeypatch.setattr(Validation, "score_folder", lambda self, folder: ValidationResult(
        "nDCG@10", values.get(Path(folder).name, 0.1), 0.2, 4, 0.0, 1.0))
    validation = Validation(dataset, bm25_run(dataset, 5))
    kwargs = dict(init=str(tiny_cross_encoder), group_config=GroupConfig(n_negatives=3),
                  train_config=_tiny_train(tmp_path, eval_steps=1), rounds=RoundsConfig(3, "step"),
                  validation=validation)
    steps = -(-dataset.queries.height // 4)  # groups of 4 queries: steps per round
    flaky = counting_loss(stop_at=steps + 2)  # stops in round 2, after its first step was saved
    with pytest.raises(KeyboardInterrupt):
        train_student("cross-encoder", dataset, scores, tmp_path / "s", loss=flaky, **kwargs)
    work = tmp_path / "s.rounds"
    assert (work / "round-1").is_dir() and not (work / "round-2").exists()
    assert any((work / "round-2.checkpoints").glob("checkpoint-*"))
    counting = counting_loss()
    # meanwhile the cache gained another split's scores: not what the rounds were trained on, so they resume
    elsewhere = scores.head(1).with_columns(pl.lit("another-split-query").alias(QID))
    grown = pl.concat([scores, elsewhere])
    result = train_student("cross-encoder", dataset, grown, tmp_path / "s", loss=counting, **kwargs)
    # round 1 was not trained again, round 2 went on from its checkpoint, round 3 ran whole
    assert counting.calls == (steps - 1) + steps
    assert result.kept_round == 2 and result.validation.value == 0.7
    assert _digest(tmp_path / "s") == _digest(work / "round-2") != _digest(work / "round-3")
    manifest = json.loads((tmp_path / "s" / "distill.json").read_text())
    assert manifest["rounds"]["kept"] == 2 and [h["lr"] for h in manifest["rounds"]["history"]] == [1e-3, 5e-4, 5e-4]
    with pytest.raises(Exception, match="other settings"):
        train_student("cross-encoder", dataset, scores, tmp_path / "s", loss="KLDiv", **kwargs)


def _constant_student(tiny_cross_encoder, folder: Path) -> Path:
    from sentence_transformers.cross_encoder import CrossEncoder

    model = CrossEncoder(str(tiny_cross_encoder), num_labels=1)
    for name, param in model.model.named_parameters():
        if "classifier" in name or "score" in name:
            torch.nn.init.zeros_(param)  # every pair gets the head's bias: 0
    model.save_pretrained(str(folder))
    return folder


def test_the_collapse_check_fires_on_a_collapsed_student_and_not_on_a_healthy_one(tiny_beir, tiny_cross_encoder,
                                                                                  tmp_path):
    dataset = load_beir(tiny_beir, "test")
    run = bm25_run(dataset, 10)
    validation = Validation(dataset, run)
    collapsed = validation.score_folder(_constant_student(tiny_cross_encoder, tmp_path / "flat"))
    assert collapsed.tied_share == 1.0 and "near-constant" in collapsed.problems[0]
    with pytest.raises(StudentCollapseError, match="COLLAPSED"):
        check_collapse(collapsed, "planted")
    check_collapse(collapsed, "planted", allow=True)  # opted out: a warning only
    # a student that ranks by the qrels: above BM25, scores spread
    graded = run.join(dataset.qrels, on=[QID, DOCID], how="left").select(
        QID, DOCID, pl.col("relevance").fill_null(0).cast(pl.Float64).alias(SCORE))
    healthy = validation.score_run(graded)
    assert healthy.problems == [] and healthy.value > healthy.first_stage
    check_collapse(healthy, "healthy")
    worse = validation.score_run(graded.with_columns(-pl.col(SCORE)))
    assert any("worse than the first stage" in p for p in worse.problems)


def test_train_student_exits_non_zero_on_collapse_unless_allowed(planted, tiny_beir, tiny_cross_encoder,  # noqa: F811
                                                                 tmp_path, capsys, monkeypatch):
    from test_students import _cache

    dataset, scores = planted
    cache = _cache(tmp_path / "cache", dataset, scores, tiny_cross_encoder)
    monkeypatch.setattr(Validation, "score_folder", lambda self, folder: ValidationResult(
        "nDCG@10", 0.1, 0.5, 4, 1.0, 0.0))
    args = ["train-student", "--student", "cross-encoder", "--cache", cache, "--data", tiny_beir, "--loss",
            "MarginMSE", "--init-from-teacher", "--layers", 1, "--negatives", 3, "--max-length", 48,
            "--valid-split", "test"]
    code, _, err = run_cli([*args, "--out", tmp_path / "a"], capsys)
    assert code == 2 and "COLLAPSED" in err and "near-constant" in err
    manifest = json.loads((tmp_path / "a" / "distill.json").read_text())
    assert manifest["validation"]["collapsed"] is True  # saved for inspection, marked
    code, _, err = run_cli([*args, "--allow-collapse", "--out", tmp_path / "b"], capsys)
    assert code == 0, err


def test_a_listwise_loss_takes_its_temperature_from_the_teachers_score_spread(planted):  # noqa: F811
    from distill.cache.score_scale import default_loss_params, score_scale

    _, scores = planted
    scale = score_scale(scores)
    assert scale.std_median > 0 and scale.margin_median >= 0
    assert default_loss_params("ListNet", {}, scale) == {"temperature": scale.temperature()}
    assert default_loss_params("listnet", {"temperature": 2}, scale) == {"temperature": 2}
    assert default_loss_params("MarginMSE", {}, scale) == {}
    doubled = score_scale(scores.with_columns(pl.col(SCORE) * 2))
    assert doubled.temperature() == pytest.approx(2 * scale.temperature(), rel=1e-3)


def test_cache_info_reports_the_teachers_per_query_spread_and_margins(planted, tiny_cross_encoder,  # noqa: F811
                                                                      tmp_path, capsys):
    from test_students import _cache

    from distill.cache.score_scale import score_scale

    dataset, scores = planted
    cache = _cache(tmp_path / "cache", dataset, scores, tiny_cross_encoder)
    code, out, err = run_cli(["cache", "info", cache], capsys)
    assert code == 0, err
    scale = score_scale(scores)
    assert "score scale over 16 queries" in out and "margin top-1 minus top-2" in out
    assert f"listwise loss (KLDiv, ListNet, LambdaLoss): {scale.temperature():.4g}" in out


def test_a_fused_teachers_weights_come_from_validation_and_are_in_its_fingerprint(tiny_beir, tmp_path, capsys):
    from distill.cache.store import TeacherCache, read_scores
    from distill.core.manifest import frame_hash
    from distill.data.runs import write_run
    from distill.evaluation.metrics import per_query
    from teachers.fusion import fuse, zscores

    dataset = load_beir(tiny_beir, "test")
    run = bm25_run(dataset, 10)
    write_run(run, tmp_path / "run.trec", tag="bm25")
    graded = run.join(dataset.qrels, on=[QID, DOCID], how="left").select(
        QID, DOCID, pl.col("relevance").fill_null(0).cast(pl.Float32).alias(SCORE))

    def fused_cache(name: str, teacher: pl.DataFrame) -> dict:
        cache = TeacherCache.create_or_open(tmp_path / name, {"kind": "planted", "name": name},
                                            frame_hash(dataset.corpus))
        cache.append(teacher)
        code, _, err = run_cli(["fuse-teacher", "--cache", tmp_path / name, "--data", tiny_beir, "--run",
                                tmp_path / "run.trec", "--valid-split", "test", "--step", 0.25,
                                "--out", tmp_path / f"{name}_fused"], capsys)
        assert code == 0, err
        return TeacherCache.open(tmp_path / f"{name}_fused").manifest["teacher"]

    def value(teacher: pl.DataFrame, weights: dict) -> float:
        scores = fuse({"teacher": teacher, "bm25": run}, weights)
        return float(per_query(dataset.qrels, scores, ["nDCG@10"])["value"].mean())

    # an inverted teacher: fusing must not follow it below BM25
    inverted = graded.with_columns(-pl.col(SCORE))
    fingerprint = fused_cache("inverted", inverted)
    assert fingerprint["kind"] == "fused" and fingerprint["components"]["teacher"] == {"kind": "planted",
                                                                                      "name": "inverted"}
    weights = fingerprint["weights"]
    assert weights["bm25"] > weights["teacher"]
    grid = [{"teacher": t, "bm25": 1 - t} for t in (0, 0.25, 0.5, 0.75, 1)]
    best = max(value(inverted, w) for w in grid)
    assert fingerprint["chosen_on"]["value"] == pytest.approx(best)
    assert best >= value(inverted, {"bm25": 1.0})
    assert value(inverted, weights) == pytest.approx(best)
    fused, _ = read_scores(tmp_path / "inverted_fused")
    expected = fuse({"teacher": inverted, "bm25": run}, weights)
    joined = fused.join(expected, on=[QID, DOCID])
    assert joined.height == run.height and (joined[SCORE] - joined[f"{SCORE}_right"]).abs().max() < 1e-5
    # a teacher that ranks by the qrels: it gets the weight
    good = fused_cache("good", graded)
    assert good["weights"]["teacher"] >= 0.5 and good["chosen_on"]["alone"]["teacher"] >= good["chosen_on"][
        "alone"]["bm25"]
    assert zscores(graded).group_by(QID).agg(pl.col(SCORE).mean().abs().max())[SCORE].max() < 1e-9


def test_a_student_below_its_starting_point_is_reported(planted, tiny_cross_encoder, tmp_path, monkeypatch,  # noqa: F811
                                                        caplog):
    from students.train import train_student

    dataset, scores = planted
    start = str(tiny_cross_encoder)
    monkeypatch.setattr(Validation, "score_folder", lambda self, folder: ValidationResult(
        "nDCG@10", 0.9 if str(folder) == start else 0.6, 0.5, 4, 0.0, 1.0))
    result = train_student("cross-encoder", dataset, scores, tmp_path / "s", loss="MarginMSE", init=start,
                           group_config=GroupConfig(n_negatives=3), train_config=_tiny_train(tmp_path),
                           validation=Validation(dataset, bm25_run(dataset, 5)))
    assert result.validation.value == 0.6 and not result.validation.problems  # above BM25: not a collapse
    assert "BELOW its starting point" in caplog.text
    manifest = json.loads((tmp_path / "s" / "distill.json").read_text())
    assert manifest["start"]["value"] == 0.9 and manifest["validation"]["value"] == 0.6


def test_marginmse_learns_from_teacher_scores_in_units_of_their_spread(planted, tiny_cross_encoder, tmp_path):  # noqa: F811
    from distill.cache.score_scale import score_scale
    from students.neural import scaled

    dataset, scores = planted
    tiny = scores.with_columns(pl.col(SCORE) * 0.01)  # a teacher spreading a query over hundredths of a logit
    divided, divisor = scaled(tiny, dataset, "MarginMSE", "auto")
    assert divisor == pytest.approx(score_scale(tiny).temperature())
    assert score_scale(divided).std_median == pytest.approx(1.0, rel=0.01)
    assert scaled(tiny, dataset, "ListNet", "auto") == (tiny, None)  # a temperature does that job
    assert scaled(tiny, dataset, "MarginMSE", None) == (tiny, None)

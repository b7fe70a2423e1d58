"""`distill demo --teacher-scores FILE`: students learn from scores computed elsewhere, no teacher trained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny import run_cli

from distill.app.pipeline import PipelineConfig, plan
from distill.core.errors import ConfigError

# a small built-in-like dataset and the fewest steps that still run every stage (tiny random models)
FAST = ["--max-length", 48, "--student-epochs", 1, "--ce-epochs", 1, "--ce-rounds", 1, "--negatives", 2,
        "--latency-queries", 2, "--test-k", 10, "--valid-fraction", 0.3, "--lightgbm-qrels-weight", 0,
        "--allow-collapse"]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    from distill.data.synthetic import make_synthetic_beir

    return make_synthetic_beir(tmp_path_factory.mktemp("import_beir") / "source", n_topics=4, queries_per_topic=10)


def scores_file(path: Path, source: Path, qids: set[str] | None = None) -> Path:
    """A TREC run scoring every (query, document) pair of ``source`` (or of the queries ``qids``): words the
    query and the document share, a small tie-breaker keeping each ranking strict."""
    docs = [json.loads(line) for line in (source / "corpus.jsonl").read_text().splitlines()]
    lines = []
    for line in (source / "queries.jsonl").read_text().splitlines():
        query = json.loads(line)
        if qids is not None and query["_id"] not in qids:
            continue
        words = set(query["text"].lower().split())
        scored = sorted(((len(words & set(f"{d['title']} {d['text']}".lower().split())) + 0.001 * i, d["_id"])
                         for i, d in enumerate(docs)), reverse=True)
        lines += [f"{query['_id']} Q0 {docid} {rank} {score:.4f} elsewhere\n"
                  for rank, (score, docid) in enumerate(scored, start=1)]
    path.write_text("".join(lines))
    return path


def test_imported_scores_replace_the_teachers_steps(tmp_path):
    cfg = PipelineConfig(out=tmp_path, init="backbone", student_layers=2, teacher_scores=Path("x/scores.trec"),
                         budget_ms=5.0)
    steps = {s.name: s for s in plan(cfg, Path("data"))}
    assert not {"pseudo-queries", "train-teacher", "score-train", "score-valid", "score-test"} & set(steps)
    assert steps["import-teacher"].argv == ["cache", "import", "x/scores.trec", "--data", "data", "--teacher-name",
                                            "scores", "--out", str(tmp_path / "cache")]
    assert "--queries" not in steps["candidates-train"].argv  # no pseudo-queries: nothing would score them
    ce = steps["student-cross-encoder"].argv
    assert ce[ce.index("--teacher") + 1] == "backbone" and "--init-from-teacher" in ce  # layers of the backbone
    build = steps["cascade-build"].argv
    assert build[build.index("--budget-ms") + 1] == "5.0" and "--budget-share" not in build
    assert f"teacher={tmp_path / 'cache'}" not in build  # no model to deploy in a cascade
    evaluate = steps["evaluate"].argv
    assert f"teacher={tmp_path / 'cache'}" in evaluate  # but evaluated, and the students agree with it
    default = {s.name for s in plan(PipelineConfig(out=tmp_path, init="b", student_layers=2), Path("data"))}
    assert "import-teacher" not in default and {"pseudo-queries", "train-teacher", "score-test"} <= default


def test_imported_scores_need_a_budget_and_no_teacher(tmp_path, source, capsys):
    with pytest.raises(ConfigError, match="not both"):
        PipelineConfig(out=tmp_path, teacher="t", teacher_scores=Path("s.trec"), budget_ms=5.0)
    code, _, err = run_cli(["demo", "--out", tmp_path / "out", "--data", source, "--teacher-scores",
                            scores_file(tmp_path / "s.trec", source)], capsys)
    assert code == 2 and "--budget-ms" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # refused before any work


def test_scores_missing_test_candidates_are_refused_naming_the_run(tmp_path, source, capsys):
    train = {line.split("\t")[0] for line in (source / "qrels" / "train.tsv").read_text().splitlines()[1:]}
    partial = scores_file(tmp_path / "train_only.trec", source, qids=train)
    code, _, err = run_cli(["demo", "--out", tmp_path / "out", "--data", source, "--teacher-scores", partial,
                            "--budget-ms", 50, *FAST], capsys)
    assert code == 2 and "lack" in err and str(tmp_path / "out" / "runs" / "test.trec") in err, err[-2000:]
    assert not (tmp_path / "out" / "models").exists()


def test_demo_trains_students_from_a_run_file_and_resumes(tmp_path, source, tiny_cross_encoder, capsys):
    from distill.cache.store import read_scores

    out = tmp_path / "demo"
    args = ["demo", "--out", out, "--data", source, "--init", tiny_cross_encoder, "--teacher-scores",
            scores_file(tmp_path / "api.trec", source), "--budget-ms", 50, *FAST]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err[-3000:]
    for name in ("report.html", "report.md", "cascade.json", "models/ce_student/distill.json",
                 "models/bi_encoder/distill.json", "models/lightgbm/model.txt"):
        assert (out / name).exists(), name
    assert not (out / "models" / "teacher").exists() and not (out / "pseudo_queries.jsonl").exists()
    record = json.loads((out / "pipeline.json").read_text())
    assert "import-teacher" in record["steps"] and not {"train-teacher", "score-test"} & set(record["steps"])
    assert record["budget"]["budget_ms"] == 50.0 and "share_of" not in record["budget"]
    assert set(record["students"]) == {"ce_student", "bi_encoder", "lightgbm"}
    scores, manifest = read_scores(out / "cache")
    assert manifest["teacher"]["kind"] == "imported" and manifest["teacher"]["name"] == "api"
    assert "teacher" not in {s["name"] for s in json.loads((out / "cascade.json").read_text())["stages"]}
    latency = json.loads((out / "eval" / "latency.json").read_text())
    assert "ce_student" in latency and "teacher" not in latency  # stored scores of no model are not timed

    before = (out / "report.html").stat().st_mtime_ns
    code, _, err = run_cli(args, capsys)  # a rerun: the import again adds nothing, every other step is done
    assert code == 0 and "done already" in err, err[-3000:]
    assert (out / "report.html").stat().st_mtime_ns == before
    assert read_scores(out / "cache")[0].equals(scores)

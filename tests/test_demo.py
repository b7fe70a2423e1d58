"""`distill demo` end to end on a reduced setting: tiny models, a small built-in dataset."""

from __future__ import annotations

import json
from html.parser import HTMLParser

from tiny import run_cli


def test_demo_writes_report_and_cascade_and_resumes(tmp_path, tiny_bi_encoder, capsys):
    """From a sentence-transformers backbone, as the packaged MiniLM is: the teacher is trained from it and it
    is fused zero-shot too."""
    out = tmp_path / "demo"
    args = ["demo", "--out", out, "--init", tiny_bi_encoder, "--max-length", 48, "--topics", 6,
            "--teacher-epochs", 1, "--student-epochs", 1, "--latency-queries", 2, "--test-k", 10,
            "--ce-rounds", 2, "--lightgbm-qrels-weight", 0, "--lightgbm-qrels-weight", 0.5,
            "--allow-collapse"]  # tiny random models: a collapse is expected, reported, not fatal
    code, _, err = run_cli(args, capsys)
    assert code == 0, err[-3000:]
    for name in ("report.html", "report.md", "cascade.json", "pipeline.json", "eval/summary.parquet",
                 "models/teacher/distill.json", "models/ce_student/distill.json",
                 "models/bi_encoder/distill.json", "models/lightgbm/model.txt", "cache/manifest.json"):
        assert (out / name).exists(), name
    html = (out / "report.html").read_text()
    HTMLParser().feed(html)
    assert html.count("data:image/png;base64,") >= 3
    spec = json.loads((out / "cascade.json").read_text())
    assert spec["format"] == "distill-cascade/2" and spec["stages"][0]["name"] == "bm25"
    steps = json.loads((out / "pipeline.json").read_text())["steps"]
    assert {"pseudo-queries", "train-teacher", "score-test", "student-lightgbm", "cascade-build",
            "evaluate"} <= set(steps)
    assert all(s["finished"] and s["attempts"] == 1 for s in steps.values()), steps
    record = json.loads((out / "pipeline.json").read_text())
    choice = record["teacher_choice"]  # chosen on valid, and said
    fused = json.loads((out / "cache_fused" / "manifest.json").read_text())["teacher"]["chosen_on"]["alone"]
    ensemble = json.loads((out / "cache_ensemble" / "manifest.json").read_text())["teacher"]
    assert set(ensemble["weights"]) == set(ensemble["chosen_on"]["alone"]) == {"teacher", "bm25", "zero_shot"}
    if fused["teacher"] < fused["bm25"]:  # the trained teacher below BM25: the zero-shot backbone's ensemble
        assert choice["teacher"] == "ensemble" and choice["weights"] == ensemble["weights"]
    else:
        assert choice["teacher"] in ("trained", "fused") and set(choice["weights"]) == {"teacher", "bm25"}
    students = record["students"]
    assert set(students) == {"ce_student", "bi_encoder", "lightgbm"}  # each validated on valid
    assert students["ce_student"]["kept_round"] in (1, 2)
    assert set(students["lightgbm"]["chosen_from"]) == {str(out / "models" / f"lightgbm_w{w}") for w in ("0", "0.5")}

    before = (out / "report.html").stat().st_mtime_ns
    code, _, err = run_cli(args, capsys)  # every step is done: nothing runs again
    assert code == 0 and "done already" in err
    assert (out / "report.html").stat().st_mtime_ns == before

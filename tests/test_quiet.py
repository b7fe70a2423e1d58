"""The console stays quiet by default: no third-party DEBUG lines, no weight-loading bars.

Run as real processes, since libraries decide about their loggers and progress bars at
import time and tqdm writes straight to the terminal's stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

NOISE = ("DEBUG", "Loading weights", "LOAD REPORT", "Building index")


def _distill(*args: str, verbose: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    for name in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY"):
        env.pop(name, None)  # what a user's shell has: nothing
    argv = [sys.executable, "-m", "distill.app.cli", *(["--verbose"] if verbose else []), *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def candidates_and_scores(tiny_beir, tiny_cross_encoder, tmp_path_factory):
    out = tmp_path_factory.mktemp("quiet")
    run = out / "run.trec"
    candidates = _distill("candidates", "--data", str(tiny_beir), "--split", "test", "--k", "5", "--out", str(run))
    scoring = _distill("score-teacher", "--teacher", str(tiny_cross_encoder), "--data", str(tiny_beir),
                       "--split", "test", "--run", str(run), "--cache", str(out / "cache"), "--dtype", "fp32",
                       "--no-sanity-check")
    return candidates, scoring


def test_candidates_and_score_teacher_print_no_library_noise(candidates_and_scores):
    for process in candidates_and_scores:
        assert process.returncode == 0, process.stderr
        output = process.stdout + process.stderr
        assert not [word for word in NOISE if word in output], output
    assert "wrote" in candidates_and_scores[0].stderr  # distill's own lines still show


def test_verbose_shows_library_logs(tiny_beir, tmp_path):
    process = _distill("candidates", "--data", str(tiny_beir), "--split", "test", "--k", "5",
                       "--out", str(tmp_path / "run.trec"), verbose=True)
    assert process.returncode == 0, process.stderr
    assert "bm25s" in process.stderr or "Building index" in process.stderr or "Split strings" in process.stderr


def test_training_prints_no_trainer_log_dicts_or_library_bars(candidates_and_scores, tiny_beir, tiny_bi_encoder,
                                                               tmp_path):
    cache = candidates_and_scores[1].args[candidates_and_scores[1].args.index("--cache") + 1]
    process = _distill("train-student", "--student", "bi-encoder", "--cache", cache, "--data", str(tiny_beir),
                       "--split", "test", "--init", str(tiny_bi_encoder), "--loss", "ListNet", "--negatives", "2",
                       "--max-length", "32", "--epochs", "1", "--out", str(tmp_path / "student"))
    assert process.returncode == 0, process.stderr
    output = process.stdout + process.stderr
    assert not [word for word in ("{'loss'", "train_runtime", "Computing widget examples") if word in output], output

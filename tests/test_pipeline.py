"""The pipeline's plan: which command lines a configuration turns into."""

from __future__ import annotations

from pathlib import Path

from distill.pipeline import PipelineConfig, plan


def _argv(steps, name: str) -> list[str]:
    return next(s.argv for s in steps if s.name == name)


def _option(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_the_cross_encoder_student_gets_its_own_epochs_and_learning_rate(tmp_path):
    cfg = PipelineConfig(out=tmp_path, init="backbone", student_layers=2, student_epochs=1.0, student_lr=5e-5,
                         ce_epochs=3.0, ce_lr=2e-4)
    steps = plan(cfg, Path("data"))
    ce, bi = _argv(steps, "student-cross-encoder"), _argv(steps, "student-bi-encoder")
    assert (_option(ce, "--epochs"), _option(ce, "--lr")) == ("3.0", "0.0002")
    assert (_option(bi, "--epochs"), _option(bi, "--lr")) == ("1.0", "5e-05")
    default = plan(PipelineConfig(out=tmp_path, init="backbone", student_layers=2), Path("data"))
    ce = _argv(default, "student-cross-encoder")
    assert (_option(ce, "--epochs"), _option(ce, "--lr")) == ("1.0", "5e-05")

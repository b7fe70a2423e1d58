"""``distill train-teacher``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from distill.app.options import config_options, with_options
from distill.core.outputs import OVERWRITE_HELP
from teachers.train import QUICK, TeacherTrainConfig, TeacherTrainSettings


def register(app: typer.Typer) -> None:
    @app.command("train-teacher")
    @with_options(config_options(TeacherTrainConfig, variant=QUICK),
                  config_options(TeacherTrainSettings, variant=QUICK))
    def train_teacher_command(
        data: Path = typer.Option(..., help="BEIR folder with `qrels/<split>.tsv`."),
        split: str = typer.Option("train", help="The training split (validation queries are held out of it)."),
        init: str = typer.Option(..., help="Model to fine-tune: folder or hub id (a fresh 1-label head is added)."),
        out: Path = typer.Option(..., help="Teacher folder to write (a CrossEncoder folder)."),
        *,
        quick: bool = typer.Option(False, help="Small settings for a smoke run."),
        resume: bool = typer.Option(False, help="Continue from the latest checkpoint in `<out>.checkpoints`."),
        overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
        **settings: Any,
    ) -> None:
        """Fine-tune a cross-encoder teacher on the split's qrels with BM25 hard negatives."""
        from distill.app import tasks

        tasks.run_train_teacher(data, out, init=init, split=split, quick=quick, resume=resume, overwrite=overwrite,
                                **settings)

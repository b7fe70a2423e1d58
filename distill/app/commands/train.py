"""``distill train-teacher``."""

from __future__ import annotations

from pathlib import Path

import typer

from distill.core.outputs import OVERWRITE_HELP


def register(app: typer.Typer) -> None:
    @app.command("train-teacher")
    def train_teacher_command(
        data: Path = typer.Option(..., help="BEIR folder with `qrels/<split>.tsv`."),
        split: str = typer.Option("train", help="The training split (validation queries are held out of it)."),
        init: str = typer.Option(..., help="Model to fine-tune: folder or hub id (a fresh 1-label head is added)."),
        out: Path = typer.Option(..., help="Teacher folder to write (a CrossEncoder folder)."),
        objective: str = typer.Option("listnet", help="listnet (softmax CE against softmax(labels), as "
                                      "sentence-transformers' ListNetLoss; default) | listwise (softmax CE against "
                                      "the one-hot positive) | pointwise (BCE)."),
        epochs: float = typer.Option(None, help="Epochs at most [2; --quick 1]."),
        patience: int = typer.Option(1, min=0, help="Stop once validation nDCG@10 has not improved for N epochs "
                                     "(0: train every epoch); the best epoch is kept either way."),
        lr: float = typer.Option(5e-5, help="Peak learning rate."),
        batch_size: int = typer.Option(4, min=1, help="Queries per batch (each with 1 + negatives documents)."),
        max_length: int = typer.Option(None, help="Tokens per pair [256; --quick 128]."),
        negatives: int = typer.Option(None, help="BM25 negatives per query [7; --quick 3]."),
        negatives_from_top: int = typer.Option(None, help="Negatives are drawn from BM25's top N [30; --quick 10]."),
        valid_fraction: float = typer.Option(0.1, help="Share of training queries held out for validation."),
        valid_k: int = typer.Option(None, help="Validation reranks BM25's top k [30; --quick 10]."),
        weak_titles: int = typer.Option(0, min=0, help="Add N title->body weak-supervision queries."),
        quick: bool = typer.Option(False, help="Small settings for a smoke run."),
        seed: int = typer.Option(42, help="Seed of sampling, held-out queries and initialisation."),
        precision: str = typer.Option("auto", help="auto (bf16 on CUDA; on CPUs bf16 where one timed step is "
                                     ">= 1.2x faster than fp32, else fp32) | fp32 | bf16 | fp16."),
        resume: bool = typer.Option(False, help="Continue from the latest checkpoint in `<out>.checkpoints`."),
        trust_remote_code: bool = typer.Option(False, help="Run the model repository's own code."),
        overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    ) -> None:
        """Fine-tune a cross-encoder teacher on the split's qrels with BM25 hard negatives."""
        from distill.app import tasks

        tasks.train_teacher(data, out, init=init, split=split, objective=objective, epochs=epochs, patience=patience,
                            lr=lr, batch_size=batch_size, max_length=max_length, negatives=negatives,
                            negatives_from_top=negatives_from_top, valid_fraction=valid_fraction, valid_k=valid_k,
                            weak_titles=weak_titles, quick=quick, seed=seed, precision=precision, resume=resume,
                            trust_remote_code=trust_remote_code, overwrite=overwrite)

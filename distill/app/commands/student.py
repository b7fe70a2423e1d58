"""``distill train-student`` and ``distill select-student``."""

from __future__ import annotations

from pathlib import Path

import typer

from distill.app.commands import positive
from distill.core.errors import ConfigError
from distill.core.outputs import OVERWRITE_HELP


def _teacher_scale(text: str) -> float | str | None:
    """``--teacher-scale``: auto | none | a positive number."""
    if text in ("auto", "none"):
        return None if text == "none" else text
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"--teacher-scale must be auto, none or a number, got {text!r}",
                          field="teacher-scale") from None


def register(app: typer.Typer) -> None:
    from distill.training.losses import LOSS_NAMES  # the registry's names, without torch

    @app.command("train-student")
    def train_student_command(
        student: str = typer.Option(..., help="cross-encoder | bi-encoder | lightgbm."),
        cache: Path = typer.Option(..., help="Teacher cache folder (from `distill score-teacher`)."),
        data: Path = typer.Option(..., help="BEIR folder the cache was scored on."),
        split: str = typer.Option(None, help="Queries of `qrels/<split>.tsv` to train on [train, unless --queries]."),
        queries: Path = typer.Option(None, help="Unjudged training queries: BEIR queries.jsonl or TSV `qid<TAB>text` "
                                     "(e.g. from `distill pseudo-queries`); added to --split's when both are given "
                                     "[none]."),
        out: Path = typer.Option(..., help="Student folder to write."),
        loss: str = typer.Option(None, help=f"Neural students: {' | '.join(LOSS_NAMES)} (see docs/losses.md) "
                                            "[required for neural students]."),
        loss_param: list[str] = typer.Option([], "--loss-param", help="Loss hyperparameter name=value, repeatable "
                                             "(a listwise loss given no temperature gets the teacher's median "
                                             "per-query score spread) [none]."),
        teacher_scale: str = typer.Option("auto", help="MarginMSE/MSE: divide the teacher's scores by this: auto "
                                          "(their median per-query std, see `distill cache info`) | none | a number."),
        hard_label_weight: float = typer.Option(0.0, min=0.0, help="Weight of a qrels term mixed into the loss."),
        hard_label_kind: str = typer.Option("bce", help="Hard-label term: bce | listwise_ce | listnet."),
        init: str = typer.Option(None, help="Student to start from: folder or hub id [required for neural students, "
                                            "unless --init-from-teacher]."),
        init_from_teacher: bool = typer.Option(False, help="Cross-encoder: start from some of the teacher's layers."),
        layers: int = typer.Option(None, min=1, help="With --init-from-teacher: encoder layers to keep [required with "
                                                     "it]."),
        layer_choice: str = typer.Option("first", help="With --layers: first (layers 0..N-1) | spread (N evenly "
                                                       "spaced, ending with the last)."),
        teacher: str = typer.Option(None, help="With --init-from-teacher: the teacher [the cache's]."),
        mode: str = typer.Option("sampled", help="Groups: sampled (positive + negatives) | listwise (teacher top-k)."),
        negatives: int = typer.Option(7, min=0, help="Sampled mode: negatives per query."),
        listwise_k: int = typer.Option(8, min=1, help="Listwise mode: the teacher's top k per query."),
        positive_source: str = typer.Option("qrels", help="Sampled mode: qrels (teacher top-1 when none) | teacher."),
        fn_margin: float = typer.Option(None, help="Drop negatives scored above the positive minus this margin [none: "
                                                   "keep them all]."),
        epochs: float = typer.Option(1.0, help="Epochs (neural students; per round with --rounds)."),
        rounds: int = typer.Option(1, min=1, help="Neural students: rounds of one epoch each, every round from the "
                                   "previous one with fresh negatives; the best on validation is kept."),
        lr_schedule: str = typer.Option("constant", help="Peak lr across rounds: constant (--lr every round) | step "
                                        "(--lr, then half of it) | halving (halved every round)."),
        lr: float = typer.Option(None, help="Learning rate [neural 2e-5; lightgbm 0.05]."),
        batch_size: int = typer.Option(8, min=1, help="Queries per batch (neural students)."),
        max_length: int = typer.Option(256, min=8, help="Tokens per text or pair (neural students)."),
        valid_fraction: float = typer.Option(None, help="Held-out training queries for the loss [neural 0; "
                                             "lightgbm 0.2]."),
        valid_split: str = typer.Option(None, help="Judged queries of --data (`qrels/<split>.tsv`) the student is "
                                        "validated on: nDCG@10 after each round, the best round kept, collapse "
                                        "checked [none: no validation]."),
        valid_run: Path = typer.Option(None, help="Candidates of --valid-split (TREC run) [BM25 top 100]."),
        allow_collapse: bool = typer.Option(False, help="Exit 0 even when the student collapses on validation "
                                            "(near-constant scores, or worse than the first stage)."),
        seed: int = typer.Option(42, help="Seed of sampling, held-out queries and initialisation."),
        precision: str = typer.Option("auto", help="auto (bf16 on CUDA; on CPUs bf16 where one timed step is "
                                     ">= 1.2x faster than fp32, else fp32) | fp32 | bf16 | fp16."),
        resume: bool = typer.Option(False, help="Continue from the latest checkpoint in `<out>.checkpoints` (with "
                                    "--rounds a rerun continues by itself)."),
        checkpoint_steps: int = typer.Option(None, min=1, help="Neural students: save a checkpoint (and evaluate, "
                                             "with --valid-fraction) every N steps [once an epoch]."),
        similarity: str = typer.Option("cosine", help="Bi-encoder: cosine | dot."),
        scale: float = typer.Option(20.0, callback=positive,
                                   help="Bi-encoder: similarity scale before the loss (> 0)."),
        learn_scale: bool = typer.Option(False, help="Bi-encoder: learn the scale."),
        objective: str = typer.Option("lambdarank", help="LightGBM: lambdarank | regression | rank_xendcg."),
        n_grades: int = typer.Option(5, help="LightGBM: teacher score grades for lambdarank."),
        num_leaves: int = typer.Option(31, help="LightGBM: leaves per tree."),
        min_data_in_leaf: int = typer.Option(20, help="LightGBM: fewest pairs in a leaf."),
        qrels_weight: float = typer.Option(0.0, min=0.0, max=1.0, help="LightGBM: share of a judged query's "
                                           "grades taken from its qrels (0: teacher only, 1: qrels only)."),
        n_estimators: int = typer.Option(500, help="LightGBM: boosting rounds at most."),
        early_stopping_rounds: int = typer.Option(50, help="LightGBM: patience on the validation NDCG."),
        feature_ranker: list[str] = typer.Option([], "--feature-ranker", help="LightGBM: NAME=SPEC, another "
                                                 "ranker's score as a feature (e.g. a bi-encoder folder); repeatable "
                                                 "[none]."),
        trust_remote_code: bool = typer.Option(False, help="Run the model repository's own code."),
        overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    ) -> None:
        """Distill the cached teacher scores into a student reranker."""
        from distill.app import student_tasks as tasks
        from distill.rankers.loading import parse_ranker_spec

        tasks.train_student(
            student, cache, data, out, split=split, queries=queries, loss=loss,
            loss_params=tasks.parse_loss_params(loss_param) or None, teacher_scale=_teacher_scale(teacher_scale),
            hard_label_weight=hard_label_weight, hard_label_kind=hard_label_kind, init=init,
            init_from_teacher=init_from_teacher, layers=layers, layer_choice=layer_choice, teacher=teacher, mode=mode,
            negatives=negatives, listwise_k=listwise_k, positive_source=positive_source, fn_margin=fn_margin,
            epochs=epochs, rounds=rounds, lr_schedule=lr_schedule, lr=lr, batch_size=batch_size,
            max_length=max_length, valid_fraction=valid_fraction, valid_split=valid_split, valid_run=valid_run,
            allow_collapse=allow_collapse, seed=seed, precision=precision, resume=resume,
            checkpoint_steps=checkpoint_steps, similarity=similarity, scale=scale, learn_scale=learn_scale,
            objective=objective, n_grades=n_grades, num_leaves=num_leaves, min_data_in_leaf=min_data_in_leaf,
            qrels_weight=qrels_weight, n_estimators=n_estimators, early_stopping_rounds=early_stopping_rounds,
            feature_rankers=dict(parse_ranker_spec(item) for item in feature_ranker) or None,
            trust_remote_code=trust_remote_code, overwrite=overwrite)

    @app.command("select-student")
    def select_student_command(
        students: list[Path] = typer.Argument(..., help="Student folders trained with --valid-split."),
        out: Path = typer.Option(..., help="Folder to copy the best of them to."),
        overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    ) -> None:
        """Keep the student with the best validation nDCG@10 (e.g. LightGBM at several --qrels-weight)."""
        from students.train import select_student

        select_student(students, out, overwrite=overwrite)

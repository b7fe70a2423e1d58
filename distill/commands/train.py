"""``distill train-teacher`` and ``distill train-student``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import typer

from distill.commands import positive
from distill.errors import ConfigError

log = logging.getLogger("distill")

STUDENTS = ("cross-encoder", "bi-encoder", "lightgbm")

# --quick: a smoke run that finishes in minutes on a laptop CPU (explicit flags still win)
QUICK = {"epochs": 1.0, "max_length": 128, "negatives": 3, "negatives_from_top": 10, "valid_k": 10}
TEACHER = {"epochs": 2.0, "max_length": 256, "negatives": 7, "negatives_from_top": 30, "valid_k": 30}


def parse_loss_params(items: list[str]) -> dict[str, Any]:
    """``["temperature=2", "margin=0.5"]`` → ``{"temperature": 2, "margin": 0.5}`` (JSON values, else strings)."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--loss-param must look like name=value, got {item!r}", field="loss-param")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
    return params


def teacher_path(manifest: dict[str, Any], cache: Path) -> str:
    """The teacher model recorded in a cache manifest's fingerprint (for --init-from-teacher)."""
    teacher = manifest.get("teacher") or {}
    for key in ("model", "model_name_or_path", "path"):
        if isinstance(teacher.get(key), str):
            return teacher[key]
    raise ConfigError(f"the cache's teacher fingerprint names no model ({teacher}); pass --teacher PATH",
                      path=cache, field="teacher")


def _teacher_scale(text: str) -> float | str | None:
    """``--teacher-scale``: auto | none | a positive number."""
    if text in ("auto", "none"):
        return None if text == "none" else text
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"--teacher-scale must be auto, none or a number, got {text!r}",
                          field="teacher-scale") from None


def _pick(value, quick: bool, name: str, defaults: dict[str, Any]):
    if value is not None:
        return value
    return QUICK[name] if quick else defaults[name]


def register(app: typer.Typer) -> None:
    from students.losses import LOSS_NAMES  # the registry's names, without torch

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
        precision: str = typer.Option("auto", help="auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16."),
        resume: bool = typer.Option(False, help="Continue from the latest checkpoint in `<out>.checkpoints`."),
        trust_remote_code: bool = typer.Option(False, help="Run the model repository's own code."),
    ) -> None:
        """Fine-tune a cross-encoder teacher on the split's qrels with BM25 hard negatives."""
        from distill.data import load_beir
        from distill.training import TrainConfig
        from teachers.train import TeacherTrainConfig, train_teacher

        train = TrainConfig(
            epochs=_pick(epochs, quick, "epochs", TEACHER), lr=lr, batch_size=batch_size,
            max_length=_pick(max_length, quick, "max_length", TEACHER), seed=seed, precision=precision,
            valid_fraction=valid_fraction, resume_from_checkpoint=True if resume else None,
        )
        config = TeacherTrainConfig(
            objective=objective, negatives=_pick(negatives, quick, "negatives", TEACHER),
            negatives_from_top=_pick(negatives_from_top, quick, "negatives_from_top", TEACHER),
            valid_k=_pick(valid_k, quick, "valid_k", TEACHER), weak_titles=weak_titles, patience=patience or None,
            trust_remote_code=trust_remote_code, train=train,
        )
        train_teacher(load_beir(data, split), out, init=init, config=config)

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
        lr_schedule: str = typer.Option("step", help="Peak lr across rounds: step (--lr, then half of it) | "
                                        "halving (halved every round) | constant."),
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
        precision: str = typer.Option("auto", help="auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16."),
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
    ) -> None:
        """Distill the cached teacher scores into a student reranker."""
        from distill.cache import TeacherCache, read_scores
        from distill.querysets import load_training_queries
        from students.train import RoundsConfig, train_student
        from students.validation import Validation

        if student not in STUDENTS:
            raise ConfigError(f"--student must be one of {', '.join(STUDENTS)}, got {student!r}")
        if (feature_ranker or qrels_weight) and student != "lightgbm":
            raise ConfigError("--feature-ranker and --qrels-weight are for the lightgbm student only "
                              "(neural students mix qrels in with --hard-label-weight)")
        scores, manifest = read_scores(cache)
        dataset = load_training_queries(data, split if split or queries else "train", queries)
        unscored, registered = TeacherCache.open(cache).unscored(dataset.queries["qid"])
        if unscored:
            log.warning("%d of the %d candidate pairs registered in %s for these queries have no teacher score "
                        "yet (a stopped score-teacher?): training on the scored ones only; rerun score-teacher to "
                        "finish", unscored, registered, cache)
        validation = Validation.load(data, valid_split, valid_run) if valid_split else None
        common = dict(teacher_fingerprint=manifest.get("teacher"), validation=validation,
                      allow_collapse=allow_collapse, scores_source=cache)
        if student == "lightgbm":
            from distill.rankers import parse_ranker_spec
            from students.lightgbm import LightGBMConfig

            config = LightGBMConfig(
                objective=objective, n_grades=n_grades, num_leaves=num_leaves, min_data_in_leaf=min_data_in_leaf,
                qrels_weight=qrels_weight,
                learning_rate=0.05 if lr is None else lr, n_estimators=n_estimators,
                valid_fraction=0.2 if valid_fraction is None else valid_fraction,
                early_stopping_rounds=early_stopping_rounds, seed=seed,
                feature_rankers=dict(parse_ranker_spec(item) for item in feature_ranker),
            )
            train_student("lightgbm", dataset, scores, out, lightgbm=config, rounds=RoundsConfig(rounds), **common)
            return
        from distill.groups import GroupConfig
        from distill.training import TrainConfig
        from students.losses import LOSSES

        if loss is None:
            raise ConfigError(f"a {student} student needs --loss, one of: {', '.join(LOSSES)}")
        if student == "cross-encoder":
            if init_from_teacher == (init is not None):
                raise ConfigError("a cross-encoder student needs exactly one of --init PATH or "
                                  "--init-from-teacher --layers N")
            if init_from_teacher != (layers is not None):
                raise ConfigError("--init-from-teacher and --layers N (the teacher layers to keep) go together")
            init = (teacher or teacher_path(manifest, cache)) if init_from_teacher else init
        elif init is None or init_from_teacher:
            raise ConfigError("a bi-encoder student needs --init (a SentenceTransformer folder or id, e.g. "
                              "all-MiniLM-L6-v2); --init-from-teacher is for cross-encoders")
        groups = GroupConfig(mode=mode, n_negatives=negatives, listwise_k=listwise_k,
                             positive_source=positive_source, false_negative_margin=fn_margin, seed=seed)
        train = TrainConfig(epochs=epochs, lr=2e-5 if lr is None else lr, batch_size=batch_size,
                            max_length=max_length, seed=seed, precision=precision,
                            valid_fraction=0.0 if valid_fraction is None else valid_fraction,
                            eval_steps=checkpoint_steps, resume_from_checkpoint=True if resume else None)
        train_student(
            student, dataset, scores, out, loss=loss, loss_params=parse_loss_params(loss_param),
            hard_label_weight=hard_label_weight, hard_label_kind=hard_label_kind, init=init,
            teacher_scale=_teacher_scale(teacher_scale),
            init_from_teacher_layers=layers if student == "cross-encoder" else None, layer_choice=layer_choice,
            group_config=groups, train_config=train, rounds=RoundsConfig(rounds, lr_schedule),
            bi_encoder={"similarity": similarity, "scale": scale, "learn_scale": learn_scale}
            if student == "bi-encoder" else None,
            trust_remote_code=trust_remote_code, **common,
        )

    @app.command("select-student")
    def select_student_command(
        students: list[Path] = typer.Argument(..., help="Student folders trained with --valid-split."),
        out: Path = typer.Option(..., help="Folder to copy the best of them to."),
    ) -> None:
        """Keep the student with the best validation nDCG@10 (e.g. LightGBM at several --qrels-weight)."""
        from students.train import select_student

        select_student(students, out)

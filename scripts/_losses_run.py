"""bench_losses.py's plan and runs: the budget, the (student, loss) entries, the shared data and teacher cache,
training one student and evaluating it (each result written once, so a rerun resumes)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from _common import minilm_path

if TYPE_CHECKING:
    from distill.rankers.base import BaseRanker

log = logging.getLogger("bench_losses")

METRIC = "nDCG@10"
BASELINE = "MarginMSE"
# Parameters a loss gets from the teacher's score scale (distill.cache.score_scale: the median per-query
# std of the teacher's scores), so teacher-dividing temperatures put every loss on the same footing.
TEACHER_SCALED = {"KLDiv": "temperature", "ListNet": "temperature", "LambdaLoss": "temperature",
                  "ApproxNDCG": "gain_temperature", "ScoreBasedInBatchCE": "min_target_diff"}


@dataclass(frozen=True)
class Entry:
    """One student trained with one loss."""

    student: str  # "bi" or "ce"
    loss: str
    params: tuple[tuple[str, object], ...] = ()
    budget: tuple[tuple[str, object], ...] = ()  # budget fields this run sets otherwise
    tag: str = ""  # names a variant with other budget fields, e.g. "schedule_step"

    @property
    def label(self) -> str:
        """The run's name: its results file, its model folder and its row in the report."""
        suffix = "".join(f"-{k}{v}" for k, v in self.params) + (f"-{self.tag}" if self.tag else "")
        return f"{self.student}_{self.loss}{suffix}"

    @property
    def table(self) -> str:
        """The report table the entry belongs to (each compared against its own baseline)."""
        return f"{self.student}_{self.tag.partition('_')[0]}" if self.tag else self.student


# Bi-encoder: every registered loss (in-batch ones included); label-only losses (GradedCE,
# SupervisedMarginMSE, InBatchCE) are the no-teacher baselines. Order = priority: the main
# families of both students come first, so a stopped run has the comparisons that matter most.
MAIN = ["MarginMSE", "ListNet", "KLDiv", "RankNet", "PListMLE"]
BI_REST = ["InBatchCE", "ScoreBasedInBatchCE", "LambdaLoss", "ListMLE", "InfoNCE", "PearsonCorrelation",
           "ApproxNDCG", "ApproxMRR", "ApproxRankMSE", "Hinge", "ConstantMarginMSE", "MSE", "BCE",
           "SupervisedMarginMSE", "GradedCE"]


SCHEDULES = ("step", "halving", "constant")  # train-student --lr-schedule; "step" is the baseline


def default_plan(students: tuple[str, ...], budget: Budget) -> list[Entry]:
    """Every entry of ``students``, in priority order: the main families, the lr schedules, the bi-encoder's rest."""
    plan = [Entry(s, loss) for loss in MAIN for s in ("bi", "ce") if s in students]
    if "ce" in students:  # the learning rate across rounds: more rounds over the bi-encoder's fewer groups
        rounds = (("ce_rounds", budget.schedule_rounds), ("ce_title_queries", budget.title_queries),
                  ("ce_precision", budget.precision))
        plan += [Entry("ce", BASELINE, budget=(*rounds, ("lr_schedule", s)), tag=f"schedule_{s}") for s in SCHEDULES]
    if "bi" in students:
        plan += [Entry("bi", loss) for loss in BI_REST]
    return plan


@dataclass
class Budget:
    """Everything that must be equal across the losses compared (written to budget.json)."""

    title_queries: int = 500  # the bi-encoder's (and the lr-schedule comparison's) title queries
    # the cross-encoder families learn from every SciFact title, as the recipe does: with 500 the 2-layer
    # student stayed far below BM25 after two rounds (valid 0.39, 0.43 against 0.68), too low to compare losses
    ce_title_queries: int = 5183
    train_k: int = 10  # BM25 candidates per training query, scored by the teacher
    eval_k: int = 20  # BM25 candidates reranked per valid/test query
    train_queries: int | None = None  # None: all of the view's train + title queries
    eval_queries: int | None = None  # None: all valid and test queries
    max_length: int = 128  # students' tokens per text (bi-encoder) or pair (cross-encoder)
    teacher_max_length: int = 256  # train-teacher and score-teacher
    negatives: int = 7
    batch_size: int = 8
    epochs: float = 1.0
    bi_lr: float = 5e-5
    ce_lr: float = 2e-4
    ce_layers: int = 2
    # the cross-encoder student trains with train-student --rounds (the best round on valid kept)
    ce_rounds: int = 1
    lr_schedule: str = "step"
    schedule_rounds: int = 4  # rounds of the lr-schedule comparison (MarginMSE, ce_title_queries = title_queries)
    scale: float = 20.0  # bi-encoder similarity scale
    teacher_epochs: float = 1.0
    teacher_negatives: int = 7
    teacher_objective: str = "listnet"
    # train-teacher's own held-out share (0: none; the view's valid split is held out of it anyway)
    teacher_valid_fraction: float = 0.0
    precision: str = "fp32"  # train-teacher and train-student --precision (a GPU would pick bf16 on auto)
    # the cross-encoder families (5 x 5,922 groups) train at the pipeline's default: bf16 where one timed step
    # says it is >= 1.2x faster (docs/results/train_precision.md: within 0.002 nDCG@10 of fp32)
    ce_precision: str = "auto"
    seed: int = 42
    teacher: str | None = None  # an existing teacher folder: no train-teacher
    students: tuple[str, ...] = ("bi", "ce")
    extra: dict = field(default_factory=dict)


def quick_budget() -> Budget:
    """--quick's budget: small enough that the whole plumbing runs in minutes on a CPU."""
    return Budget(title_queries=20, ce_title_queries=40, train_k=5, eval_k=10, train_queries=48, eval_queries=24,
                  max_length=64, teacher_max_length=64, negatives=3, batch_size=8, epochs=1.0, schedule_rounds=2,
                  teacher_epochs=0.05, teacher_negatives=3)


# --quick trains these only (a group loss and an in-batch one for the bi-encoder, two for the cross-encoder)
QUICK_LOSSES = {"MarginMSE", "ListNet", "ScoreBasedInBatchCE"}


def invoke(argv: list) -> None:
    """Run one ``distill`` command line in this process, logged first so the log shows how each step was made."""
    from _common import run_distill

    log.info("distill %s", " ".join(str(a) for a in argv))
    run_distill(argv)


def subsample(run_path: Path, out: Path, n: int | None, seed: int) -> Path:
    """``run_path`` restricted to ``n`` of its queries (by a seeded hash of the qid), or as it is."""
    if out.exists():
        return out
    if n is None:
        shutil.copyfile(run_path, out)
        return out
    import zlib

    import polars as pl

    from distill.data.runs import read_run, write_run

    run = read_run(run_path)
    qids = sorted(run["qid"].unique().to_list(), key=lambda q: zlib.crc32(f"{seed}:{q}".encode()))[:n]
    write_run(run.filter(pl.col("qid").is_in(qids)), out)
    return out


def prepare(args: argparse.Namespace, budget: Budget, plan: list[Entry]) -> dict:
    """View, candidates, teacher and cache (each skipped when present); the teacher's score scale."""
    from distill.app.pipeline import TITLE_SPLIT, split_view
    from distill.cache.score_scale import score_scale
    from distill.cache.store import read_scores

    out = args.out
    view = split_view(args.data, out / "data", "train", 0.1, budget.title_queries, budget.seed)
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    train_split = TITLE_SPLIT if budget.title_queries else "train"
    splits = {"train": (train_split, budget.train_k, budget.train_queries),
              "valid": ("valid", budget.eval_k, budget.eval_queries),
              "test": ("test", budget.eval_k, budget.eval_queries)}
    paths = {}
    for name, (split, k, n) in splits.items():
        paths[name] = candidates(view, split, k, n, runs, name, budget.seed)
    teacher = budget.teacher or out / "teacher"
    if not Path(teacher).exists():
        invoke(["train-teacher", "--data", view, "--split", "train", "--init", minilm_path(), "--out", teacher,
                "--epochs", budget.teacher_epochs, "--max-length", budget.teacher_max_length,
                "--negatives", budget.teacher_negatives, "--objective", budget.teacher_objective,
                "--valid-fraction", budget.teacher_valid_fraction, "--precision", budget.precision,
                "--seed", budget.seed])
    cache = out / "cache"
    views = {budget.title_queries: (view, paths["train"], "cache.done")}
    if any(student_titles(e, budget) == budget.ce_title_queries != budget.title_queries for e in plan):
        ce_view = split_view(args.data, out / f"data_titles{budget.ce_title_queries}", "train", 0.1,
                             budget.ce_title_queries, budget.seed)
        ce_run = candidates(ce_view, train_split, budget.train_k, budget.train_queries, runs,
                            f"train_titles{budget.ce_title_queries}", budget.seed)
        views[budget.ce_title_queries] = (ce_view, ce_run, f"cache_titles{budget.ce_title_queries}.done")
    from distill.data.runs import read_run

    scored = {}
    for titles, (data, run, done) in views.items():  # one cache: a pair two views share is scored once
        if not (out / done).exists():
            invoke(["score-teacher", "--teacher", teacher, "--data", data, "--split", train_split, "--run", run,
                    "--cache", cache, "--max-length", budget.teacher_max_length])
            (out / done).write_text("scored\n")
        # the scale of the training scores only (the teacher reference adds valid/test scores later)
        scale = score_scale(read_scores(cache)[0].join(read_run(run).select("qid").unique(), on="qid", how="semi"))
        scored[str(titles)] = {"view": data, "scale": scale.to_dict(), "temperature": scale.temperature()}
    import torch

    ctx = {"view": view, "split": train_split, "runs": paths, "teacher": str(teacher), "cache": cache,
           "views": scored, **{k: scored[str(budget.title_queries)][k] for k in ("scale", "temperature")},
           "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    from distill.core.io import write_json_atomic

    write_json_atomic(out / "context.json", json.loads(json.dumps(ctx, default=str)))
    return ctx


def candidates(view: Path, split: str, k: int, n: int | None, runs: Path, name: str, seed: int) -> Path:
    """BM25's top ``k`` for ``split`` of ``view`` (``runs/<name>.trec``, ``n`` of its queries), made once."""
    full = runs / f"{name}_bm25_top{k}.trec"
    if not full.exists():
        invoke(["candidates", "--data", view, "--split", split, "--k", k, "--out", full])
    return subsample(full, runs / f"{name}.trec", n, seed)


def student_titles(entry: Entry, budget: Budget) -> int:
    """How many title queries the entry's student learns from (besides the train queries)."""
    if entry.student == "bi":
        return budget.title_queries
    return dict(entry.budget).get("ce_title_queries", budget.ce_title_queries)


def student_view(entry: Entry, budget: Budget, ctx: dict) -> dict:
    """The view (and its teacher score scale) an entry's student learns from."""
    return ctx["views"][str(student_titles(entry, budget))]


def loss_params(entry: Entry, temperature: float) -> dict:
    """The entry's loss parameters, its teacher-scaled one (:data:`TEACHER_SCALED`) set to ``temperature`` if unset."""
    params = dict(entry.params)
    scaled = TEACHER_SCALED.get(entry.loss)
    if scaled and scaled not in params:
        params[scaled] = temperature
    return params


def train(entry: Entry, params: dict, ctx: dict, budget: Budget, folder: Path) -> float:
    """Train one student into ``folder`` (atomic: a folder that exists is complete); seconds taken."""
    start = time.perf_counter()
    common = ["train-student", "--cache", ctx["cache"], "--data", student_view(entry, budget, ctx)["view"],
              "--split", ctx["split"],
              "--loss", entry.loss, *[a for k, v in params.items() for a in ("--loss-param", f"{k}={v}")],
              "--mode", "sampled", "--negatives", budget.negatives, "--batch-size", budget.batch_size,
              "--epochs", budget.epochs, "--max-length", budget.max_length, "--seed", budget.seed,
              "--valid-fraction", 0.0, "--out", folder,
              "--precision", budget.ce_precision if entry.student == "ce" else budget.precision]
    if entry.student == "bi":
        invoke([*common, "--student", "bi-encoder", "--init", minilm_path(), "--lr", budget.bi_lr,
                "--scale", budget.scale])
    else:
        invoke([*common, "--student", "cross-encoder", "--init-from-teacher", "--teacher", ctx["teacher"],
                "--layers", budget.ce_layers, "--layer-choice", "spread", "--lr", budget.ce_lr,
                "--rounds", budget.ce_rounds, "--lr-schedule", budget.lr_schedule, "--valid-split", "valid",
                "--valid-run", ctx["runs"]["valid"], "--allow-collapse"])
    return time.perf_counter() - start


def per_query_ndcg(ranker: BaseRanker, ctx: dict, split: str) -> dict[str, float]:
    """nDCG@10 of every query of ``split`` when ``ranker`` reranks its candidates.

    ``rerank`` without ``prepare``: a bi-encoder embeds only the candidates, not the whole corpus."""
    from distill.data.beir import load_beir
    from distill.data.runs import read_run
    from distill.evaluation.metrics import per_query

    dataset = load_beir(ctx["view"], split)
    run = read_run(ctx["runs"][split])
    ranked = ranker.rerank(dataset, run)
    values = per_query(dataset.qrels.join(run.select("qid").unique(), on="qid", how="semi"), ranked, (METRIC,))
    return dict(zip(values["qid"].to_list(), values["value"].to_list(), strict=True))


def evaluate(spec: str, ctx: dict) -> dict[str, dict[str, float]]:
    """Per-query nDCG@10 on valid and on test of the ranker ``spec`` names (a model folder, bm25, a cache)."""
    from distill.rankers.loading import load_ranker

    ranker = load_ranker(spec, name="r")
    return {split: per_query_ndcg(ranker, ctx, split) for split in ("valid", "test")}


def run_entry(entry: Entry, ctx: dict, budget: Budget, out: Path, keep_models: bool) -> dict:
    """Train and evaluate one entry, or read its result when a previous run wrote it (resumable)."""
    path = out / "results" / f"{entry.label}.json"
    if path.exists():
        return json.loads(path.read_text())
    from distill.core.io import write_json_atomic

    params = loss_params(entry, student_view(entry, budget, ctx)["temperature"])
    folder = out / "models" / entry.label
    seconds = None if folder.exists() else train(entry, params, ctx, replace(budget, **dict(entry.budget)), folder)
    start = time.perf_counter()
    result = {"student": entry.student, "loss": entry.loss, "label": entry.label, "params": params,
              "budget": dict(entry.budget), "train_seconds": seconds, "load": os.getloadavg()[0],
              "device": ctx["device"],
              **evaluate(str(folder), ctx)}
    result["eval_seconds"] = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, result)
    if not keep_models:
        shutil.rmtree(folder, ignore_errors=True)
        for suffix in (".checkpoints", ".rounds"):
            shutil.rmtree(folder.with_name(folder.name + suffix), ignore_errors=True)
    log.info("%s: valid %.4f test %.4f", entry.label, mean(result["valid"]), mean(result["test"]))
    return result


def reference(name: str, spec: str, ctx: dict, out: Path) -> dict:
    """BM25 (the candidates' own order) as a reference row, resumable like the losses."""
    path = out / "results" / f"ref_{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    from distill.core.io import write_json_atomic

    result = {"student": "ref", "loss": name, "label": f"ref_{name}", "params": {}, **evaluate(spec, ctx)}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, result)
    return result


def mean(values: dict[str, float]) -> float:
    """Mean over the queries of per-query values (NaN when there are none)."""
    return sum(values.values()) / len(values) if values else math.nan


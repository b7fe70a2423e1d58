"""Which distillation loss wins on real data: every applicable loss, one teacher cache, one budget.

From ONE SciFact teacher cache (the train queries of the pipeline's split view plus title
queries, `distill split-view --title-queries`), trains the bi-encoder student with every loss
that applies to it and the 2-layer cross-encoder student with the main families, all under one
fixed budget (same groups, steps, seed and data), and reports nDCG@10 on the held-out valid
queries and on the test queries, with paired t-tests against MarginMSE (Holm-adjusted over the
losses of a student and split, distill's own ``paired_tests``/``adjust_p_values``). Defaults are
chosen on valid only; test is reported, never used to choose.

Resumable loss by loss: each finished (student, loss) writes ``<out>/results/<student>_<loss>.json``
and is skipped on a rerun; the view, candidates, teacher and cache are reused when present.
The budget is recorded in ``<out>/budget.json``; a rerun with another budget is refused.

    python scripts/bench_losses.py --quick                      # a few minutes: plumbing only
    nice -n 10 python scripts/bench_losses.py --out bench_out/losses --write-doc docs/results/losses.md
    python scripts/bench_losses.py --out bench_out/losses --report-only --write-doc docs/results/losses.md
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from _common import DEFAULT_DATA, minilm_path

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
    return Budget(title_queries=20, ce_title_queries=40, train_k=5, eval_k=10, train_queries=48, eval_queries=24,
                  max_length=64, teacher_max_length=64, negatives=3, batch_size=8, epochs=1.0, schedule_rounds=2,
                  teacher_epochs=0.05, teacher_negatives=3)


# --quick trains these only (a group loss and an in-batch one for the bi-encoder, two for the cross-encoder)
QUICK_LOSSES = {"MarginMSE", "ListNet", "ScoreBasedInBatchCE"}


def invoke(argv: list) -> None:
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


def prepare(args, budget: Budget, plan: list[Entry]) -> dict:
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


def per_query_ndcg(ranker, ctx: dict, split: str) -> dict[str, float]:
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
    from distill.rankers.loading import load_ranker

    ranker = load_ranker(spec, name="r")
    return {split: per_query_ndcg(ranker, ctx, split) for split in ("valid", "test")}


def run_entry(entry: Entry, ctx: dict, budget: Budget, out: Path, keep_models: bool) -> dict:
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
    return sum(values.values()) / len(values) if values else math.nan


def compare(rows: list[dict], base: dict, split: str) -> dict[str, dict]:
    """Per row label: paired t-test against ``base`` on ``split``, Holm-adjusted over the rows."""
    import numpy as np

    from distill.evaluation.runner import adjust_p_values, paired_tests

    tests = []
    for r in rows:
        qids = sorted(set(base[split]) & set(r[split]))
        tests.append(paired_tests(np.array([r[split][q] for q in qids]), np.array([base[split][q] for q in qids])))
    adjusted = adjust_p_values(np.array([t["p_ttest"] for t in tests]), "holm") if tests else []
    return {r["label"]: {**t, "p_holm": float(p)} for r, t, p in zip(rows, tests, adjusted, strict=True)}


def fmt_p(p: float) -> str:
    if p is None or math.isnan(p):
        return ""
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


TABLES = {  # report table -> title, what it varies
    "bi": ("Bi-encoder student (all-MiniLM-L6-v2)", "loss"),
    "ce": ("Cross-encoder student ({layers} of the teacher's layers)", "loss"),
    "ce_schedule": ("Learning rate across the cross-encoder's rounds", "lr_schedule"),
}


def report(args, budget: Budget, plan: list[Entry], ctx: dict | None, started: float | None) -> str:
    """docs/results/losses.md: the tables of what finished, and the losses not yet run."""
    results_dir = args.out / "results"
    results = [json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json"))] if results_dir.exists() else []
    by_label = {r["label"]: r for r in results}
    if ctx is None and (args.out / "context.json").exists():
        ctx = json.loads((args.out / "context.json").read_text())
    lines = ["# Which distillation loss wins on SciFact", ""]
    lines += [f"Command: `python scripts/bench_losses.py --out {args.out}` (resumable; processes given "
              "`--students`/`--losses` subsets may share the folder). Last update "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "", machines(results), "",
        "**Budget (the same for every loss of a table)**: " + ", ".join(
            f"{k}={v}" for k, v in asdict(budget).items() if k not in ("extra", "students")) + ".",
    ]
    if ctx:
        lines += ["", f"Teacher: `{ctx['teacher']}` (MiniLM-L6 cross-encoder, `distill train-teacher --objective "
                  f"{budget.teacher_objective}` on the view's train queries). Its per-query score std (median) "
                  f"is {ctx['scale']['std_median']:.3f}: the teacher-dividing temperatures "
                  f"({', '.join(f'{k}.{v}' for k, v in TEACHER_SCALED.items())}) are set to it "
                  f"({ctx['temperature']:g}), as the pipeline's default for a listwise loss given none."]
    stage = ("the teacher is trained and its cache scored" if (args.out / "cache.done").exists() else
             "the teacher's cache is being scored" if budget.teacher or (args.out / "teacher").exists() else
             "the teacher is being trained (no student can start before it and its cache)")
    finished = sum(e.label in by_label for e in plan)
    lines += ["", f"**Status: {finished} of {len(plan)} runs finished; {stage}.** "
              "Rerunning the command resumes where it stopped (finished runs are skipped)."]
    lines += ["", "Groups: 1 positive (qrels; teacher top-1 for title queries without one among the candidates) "
              f"+ {budget.negatives} BM25 negatives per query, every loss on the same groups and steps. "
              f"nDCG@10 over BM25's top {budget.eval_k}. p: paired t-test against the table's first row, "
              "Holm-adjusted over the table's rows (per split). Defaults are chosen on valid; test is only reported.",
              ""]
    notes = args.out / "NOTES.md"  # how this folder's runs were made, when not by the command alone
    if notes.exists():
        lines += ["## How these runs were made", "", notes.read_text().strip(), ""]
    refs = [r for r in results if r["student"] == "ref"]
    for table, (title, varies) in TABLES.items():
        entries = [e for e in plan if e.table == table]
        if entries:
            lines += table_lines(title.format(layers=budget.ce_layers), table_note(table, budget), entries,
                                 by_label, refs, varies)
    if getattr(args, "cross_check", None):
        lines += cross_check(results, args.cross_check)
    return "\n".join(lines) + "\n"


def machines(results: list[dict]) -> str:
    """Where the student runs ran, and their process time (training + evaluation) per device."""
    by_device: dict[str, list[dict]] = {}
    for r in results:
        if r["student"] != "ref":
            by_device.setdefault(r.get("device", "cpu"), []).append(r)
    minutes = {d: sum((r["train_seconds"] or 0) + r.get("eval_seconds", 0) for r in rs) / 60
               for d, rs in by_device.items()}
    parts = [f"{d}: {len(rs)} run(s), {minutes[d]:.0f} min of process time" for d, rs in sorted(by_device.items())]
    return ("Student runs by device (`train s`: one run's training; `load`: the 1-minute load average when it "
            "finished, so train times compare only at equal load): " + "; ".join(parts) + "." if parts else "")


def cross_check(results: list[dict], other: Path) -> list[str]:
    """The runs finished in both this folder and ``other`` (same budget, another device or process)."""
    theirs = {r["label"]: r for r in (json.loads(p.read_text()) for p in sorted(other.glob("results/*.json")))}
    rows = [(r, theirs[r["label"]]) for r in results if r["label"] in theirs and r["student"] != "ref"]
    if not rows:
        return []
    lines = ["## The same runs elsewhere", "", f"Runs of this budget also finished in `{other}`: how far the "
             "device (and its kernels' arithmetic) moves one run, to read the tables' differences against.", "",
             "| run | device | valid | test | other device | valid | test |", "|---|---|---|---|---|---|---|"]
    for r, o in rows:
        lines.append(f"| {r['label']} | {r.get('device', 'cpu')} | {mean(r['valid']):.4f} | {mean(r['test']):.4f} | "
                     f"{o.get('device', 'cpu')} | {mean(o['valid']):.4f} | {mean(o['test']):.4f} |")
    deltas = [abs(mean(r["valid"]) - mean(o["valid"])) for r, o in rows]
    return [*lines, "", f"Largest valid difference between the two: {max(deltas):.4f}.", ""]


def table_note(table: str, budget: Budget) -> str:
    if table == "bi":
        return (f"{budget.title_queries} title queries with the train queries, {budget.epochs:g} epoch, "
                f"lr {budget.bi_lr:g}, similarity scale {budget.scale:g}.")
    rounds, titles, what = ((budget.ce_rounds, budget.ce_title_queries, f"lr schedule `{budget.lr_schedule}`")
                            if table == "ce" else (budget.schedule_rounds, budget.title_queries, "MarginMSE"))
    return (f"{titles} title queries with the train queries, {rounds} round(s) of {budget.epochs:g} epoch "
            f"(`train-student --rounds`, fresh negatives each round, peak lr {budget.ce_lr:g}), {what}; the best "
            "round on valid is kept, so valid figures carry that choice (test does not).")


def table_lines(title: str, note: str, entries: list[Entry], by_label: dict, refs: list[dict], varies: str) -> list:
    lines = [f"## {title}", "", note, "", f"| {varies} | params | valid nDCG@10 | Δ valid | p valid | test nDCG@10 | "
             "Δ test | p test | train s | load |", "|---|---|---|---|---|---|---|---|---|---|"]
    done = [by_label[e.label] for e in entries if e.label in by_label]
    base = by_label.get(entries[0].label)
    others = [r for r in done if r is not base]
    tests = {split: compare(others, base, split) if base else {} for split in ("valid", "test")}
    best = max(done, key=lambda r: mean(r["valid"]), default=None)
    for r in refs:
        lines.append(f"| {r['loss']} (reference) | | {mean(r['valid']):.4f} | | | {mean(r['test']):.4f} | | | | |")
    for e in entries:
        name = dict(e.budget).get(varies, e.loss)
        r = by_label.get(e.label)
        if r is None:
            lines.append(f"| {name} | | *not run yet* | | | | | | | |")
            continue
        tv, tt = tests["valid"].get(r["label"], {}), tests["test"].get(r["label"], {})
        params = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["params"].items())
        name = f"**{name}**" if r is best else name
        seconds = "" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}"  # None: trained by another process
        lines.append(
            f"| {name} | {params} | {mean(r['valid']):.4f} | {tv.get('mean_delta', math.nan):+.4f} | "
            f"{fmt_p(tv.get('p_holm'))} | {mean(r['test']):.4f} | {tt.get('mean_delta', math.nan):+.4f} | "
            f"{fmt_p(tt.get('p_holm'))} | {seconds} | {r.get('load', math.nan):.1f} |"
            .replace("| +nan |", "| |").replace("| nan |", "| |"))
    queries = (len(done[0]["valid"]), len(done[0]["test"])) if done else (0, 0)
    return [*lines, "", f"Bold: best on valid among the {len(done)} of {len(entries)} rows run so far. "
            f"Queries: {queries[0]} valid, {queries[1]} test.", ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=None, help="Work folder [bench_out/losses(_quick)].")
    parser.add_argument("--quick", action="store_true", help="Tiny budget: checks the plumbing in minutes.")
    parser.add_argument("--teacher", default=None, help="An existing teacher folder: skips train-teacher.")
    parser.add_argument("--students", default="bi,ce", help="Comma-separated: bi, ce.")
    parser.add_argument("--losses", default=None,
                        help="Comma-separated subset of the plan: losses, run labels or tables (ce_schedule).")
    parser.add_argument("--title-queries", type=int, default=None)
    parser.add_argument("--epochs", type=float, default=None)
    parser.add_argument("--keep-models", action="store_true", help="Keep each student's folder after evaluation.")
    parser.add_argument("--report-only", action="store_true", help="Only rewrite the report from the results.")
    parser.add_argument("--write-doc", type=Path, default=None, help="Also write the report there (markdown).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cross-check", type=Path, default=None,
                        help="Another work folder of the same budget: report its runs beside this folder's.")
    parser.add_argument("--no-teacher-reference", action="store_true",
                        help="Leave scoring the teacher's valid/test reference to another process on this folder.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.out = args.out or Path("bench_out") / ("losses_quick" if args.quick else "losses")

    budget = quick_budget() if args.quick else Budget()
    budget.students = tuple(s for s in args.students.split(",") if s)
    budget.teacher = args.teacher
    for name in ("title_queries", "epochs"):
        if getattr(args, name) is not None:
            setattr(budget, name, getattr(args, name))
    plan = default_plan(budget.students, budget)
    wanted = set(args.losses.split(",")) if args.losses else QUICK_LOSSES if args.quick else None
    if wanted:
        # a loss name picks that loss's own rows, not the variants (schedules) that train with it
        plan = [e for e in plan if wanted & {e.label, e.table} or (not e.tag and e.loss in wanted)]
    check_budget(args.out, budget)
    if args.report_only:
        write_report(args, budget, plan, None, None)
        return

    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    record_time(args.out, started)
    ctx = prepare(args, budget, plan)
    record_time(args.out, started)  # the teacher's training and scoring count too
    reference("BM25", "bm25", ctx, args.out)  # the candidates' own order
    for entry in plan:
        run_entry(entry, ctx, budget, args.out, args.keep_models)
        record_time(args.out, started)
        write_report(args, budget, plan, ctx, started)
    # the teacher itself, last: scoring the valid and test candidates costs about one student's time
    if (not args.no_teacher_reference and not (args.out / "results" / "ref_teacher.json").exists()
            and _claim(args.out / "teacher_ref.lock")):
        for split in ("valid", "test"):
            invoke(["score-teacher", "--teacher", ctx["teacher"], "--data", ctx["view"], "--split", split,
                    "--run", ctx["runs"][split], "--cache", ctx["cache"], "--max-length", budget.teacher_max_length])
        reference("teacher", str(ctx["cache"]), ctx, args.out)
    record_time(args.out, started, finished=True)
    write_report(args, budget, plan, ctx, started)


def _claim(path: Path):
    """An exclusive lock on ``path`` held until exit, or None when another process holds it."""
    import fcntl

    handle = open(path, "w")  # noqa: SIM115 - held open: the lock lasts as long as the process
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def check_budget(out: Path, budget: Budget) -> None:
    """Refuse to mix results of different budgets in one folder."""
    from distill.core.errors import ConfigError
    from distill.core.io import write_json_atomic

    path = out / "budget.json"
    # which students a process trains is not part of the budget: two processes (--students bi / ce,
    # --threads 1 each) may share one folder, each resuming its own losses
    current = {k: v for k, v in json.loads(json.dumps(asdict(budget))).items() if k != "students"}
    if path.exists():
        earlier = json.loads(path.read_text())
        earlier.pop("students", None)
        if earlier != current:
            raise ConfigError(f"{out} holds results of another budget ({earlier}); use another --out", path=path)
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, current)


def record_time(out: Path, started: float, finished: bool = False) -> None:
    """Wall time summed over the sessions (and parallel processes: then it is process time) on this folder."""
    import fcntl
    import sys

    from distill.core.io import write_json_atomic

    path = out / "timing.json"
    with open(out / "timing.lock", "w") as lock:  # two processes may share the folder
        fcntl.flock(lock, fcntl.LOCK_EX)
        timing = json.loads(path.read_text()) if path.exists() else {"wall_seconds": 0.0, "sessions": 0}
        timing.pop("current", None)  # the single-process form of the open sessions below
        key = f"{os.getpid()}:{started}"
        counted = timing.setdefault("open", {}).get(key)
        if counted is None:  # a new session (process) on this folder
            timing["sessions"] += 1
            counted = 0.0
        now = time.perf_counter() - started
        timing["wall_seconds"] += now - counted
        timing["open"] = {k: v for k, v in timing["open"].items() if k.startswith(f"{os.getpid()}:")
                          or _alive(int(k.split(":")[0]))}
        timing["open"][key] = now
        timing["command"] = " ".join(["python", *sys.argv])
        timing["finished"] = finished
        write_json_atomic(path, timing)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def write_report(args, budget: Budget, plan: list[Entry], ctx: dict | None, started: float | None) -> None:
    from distill.core.io import write_text_atomic

    text = report(args, budget, plan, ctx, started)
    write_text_atomic(args.out / "losses.md", text)
    if args.write_doc:
        args.write_doc.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.write_doc, text)


if __name__ == "__main__":
    main()

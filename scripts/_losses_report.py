"""bench_losses.py's report (``losses.md``): one table per student and variant, with paired tests against
its first row, read only from the result files the runs wrote."""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

from _losses_run import TEACHER_SCALED, Budget, Entry, mean


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


def fmt_p(p: float | None) -> str:
    """A p-value as the tables print it: blank when missing, ``< 0.001`` below that."""
    if p is None or math.isnan(p):
        return ""
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


TABLES = {  # report table -> title, what it varies
    "bi": ("Bi-encoder student (all-MiniLM-L6-v2)", "loss"),
    "ce": ("Cross-encoder student ({layers} of the teacher's layers)", "loss"),
    "ce_schedule": ("Learning rate across the cross-encoder's rounds", "lr_schedule"),
}


def report(args: argparse.Namespace, budget: Budget, plan: list[Entry], ctx: dict | None, started: float | None) -> str:
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
    """The sentence under a table's title: the budget its rows share."""
    if table == "bi":
        return (f"{budget.title_queries} title queries with the train queries, {budget.epochs:g} epoch, "
                f"lr {budget.bi_lr:g}, similarity scale {budget.scale:g}.")
    rounds, titles, what = ((budget.ce_rounds, budget.ce_title_queries, f"lr schedule `{budget.lr_schedule}`")
                            if table == "ce" else (budget.schedule_rounds, budget.title_queries, "MarginMSE"))
    return (f"{titles} title queries with the train queries, {rounds} round(s) of {budget.epochs:g} epoch "
            f"(`train-student --rounds`, fresh negatives each round, peak lr {budget.ce_lr:g}), {what}; the best "
            "round on valid is kept, so valid figures carry that choice (test does not).")


def table_lines(title: str, note: str, entries: list[Entry], by_label: dict, refs: list[dict],
                varies: str) -> list[str]:
    """One report table: the reference rows, then each entry's figures and tests against the first entry."""
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



def write_report(args: argparse.Namespace, budget: Budget, plan: list[Entry], ctx: dict | None,
                 started: float | None) -> None:
    """The report to ``<out>/losses.md`` and, with ``--write-doc``, there too (atomic: readers see whole files)."""
    from distill.core.io import write_text_atomic

    text = report(args, budget, plan, ctx, started)
    write_text_atomic(args.out / "losses.md", text)
    if args.write_doc:
        args.write_doc.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.write_doc, text)


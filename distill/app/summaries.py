"""What ``distill cascade build``, ``cascade run``, ``evaluate``, ``cache info`` and ``fuse-teacher`` print of
their task's result (rich tables, on stdout): the tasks (:mod:`distill.app.tasks`) print nothing, their commands and the
demo's steps print with these."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distill.app.tasks import CascadeRun
    from distill.cache.score_scale import ScoreScale
    from distill.cache.store import CacheInfo
    from distill.cascade.search import CascadeBuild
    from distill.evaluation.runner import EvaluationResult
    from teachers.fusion import FusedWeights

log = logging.getLogger("distill")


def print_cascade_build(built: CascadeBuild, out: Path) -> None:
    """The Pareto frontier (chosen row marked) and the chosen cascade's metrics (ir-measures) next to its
    first stage's alone, then (logged) the spec ``out`` the task wrote."""
    from rich.console import Console
    from rich.table import Table

    result, first = built.search, built.cascade.stages[0].name  # every cascade searched starts with the first stage
    console = Console()
    table = Table("", "cascade", result.metric, "ms / query", "fits",
                  title=f"Pareto frontier ({result.n_evaluated} cascades evaluated, budget {result.budget_ms:g} ms)")
    for row in result.frontier.iter_rows(named=True):
        mark = "→" if row["cascade"] == str(result.chosen) else ""
        table.add_row(mark, row["cascade"], f"{row[result.metric]:.4f}", f"{row['latency_ms']:.2f}",
                      "yes" if row["within_budget"] else "no")
    console.print(table)
    console.print(f"chosen: [bold]{result.chosen}[/], expected {result.chosen.latency_ms:.2f} ms per query",
                  highlight=False)
    metrics = Table("metric", f"{first} alone", "cascade", title="validation (ir-measures)")
    for name, value in built.metrics.items():
        metrics.add_row(name, f"{built.first_stage_metrics[name]:.4f}", f"{value:.4f}")
    console.print(metrics)
    log.info("wrote %s", out)


def print_cascade_run(run: CascadeRun) -> None:
    """A cascade run's metrics next to its candidates', its latency and the stages it skipped."""
    from rich.console import Console
    from rich.table import Table

    console, summary, budget_ms = Console(), run.summary, run.cascade.budget_ms
    console.print(f"[bold]{run.cascade}[/] on {run.where}, budget "
                  f"{'none' if budget_ms is None else f'{budget_ms:g} ms'}", highlight=False)
    table = Table("metric", "candidates", "cascade")
    for name, value in summary["metrics"].items():
        table.add_row(name, f"{summary['candidate_metrics'][name]:.4f}", f"{value:.4f}")
    console.print(table)
    stats = summary["latency"]
    console.print(f"latency per query: p50 {stats['p50_ms']:.2f} ms, p95 {stats['p95_ms']:.2f} ms, "
                  f"mean {stats['mean_ms']:.2f} ms over {stats['queries']} queries", highlight=False)
    console.print("skipped (queries): " + ", ".join(f"{n} {c}" for n, c in stats["skipped"].items()),
                  highlight=False)


def print_evaluation(result: EvaluationResult, out: Path) -> None:
    """The metric means and wins against the baseline, and the folder ``out`` the evaluation was written to."""
    from rich.console import Console
    from rich.table import Table

    from distill.evaluation.calibration import ECE, PRECISION_AT

    table = Table(title=f"{result.dataset} (baseline {result.baseline})")
    # a calibrated cascade's expected calibration error and precision at 0.5
    calibrated = [ECE, PRECISION_AT] if ECE in result.summary.columns else []
    columns = ["ranker", *result.metrics, *calibrated, "wins", "losses", "ties"]
    for column in columns:
        table.add_column(column, justify="left" if column == "ranker" else "right")
    for row in result.summary.select(columns).iter_rows():
        table.add_row(*[f"{v:.4f}" if isinstance(v, float) else "" if v is None else str(v) for v in row])
    console = Console()
    console.print(table)
    console.print(f"wrote {out}/ (report.html, report.md, summary.parquet, per_query.parquet, runs.parquet)")


def print_cache_info(folder: Path, info: CacheInfo, scale: ScoreScale) -> None:
    """A cache's size, its teacher, each candidate set's coverage and the scale of the teacher's scores."""
    import json

    from rich.console import Console
    from rich.table import Table

    from distill.cache.score_scale import describe_scale

    console = Console()
    console.print(f"[bold]{folder}[/]: {info.rows} scores, {info.queries} queries, {info.shards} shard(s)")
    console.print("teacher: " + json.dumps(info.teacher, sort_keys=True), highlight=False, soft_wrap=True)
    table = Table("candidates", "source", "pairs", "scored", "coverage")
    for c in info.coverage:
        table.add_row(c["hash"], c["source"], str(c["pairs"]), str(c["scored"]), f"{c['coverage']:.1%}")
    console.print(table)
    console.print(describe_scale(scale), highlight=False)


def print_fused_teacher(chosen: FusedWeights, caches: list[Path], out: Path,
                        scorers: Mapping[str, str] | None = None) -> None:
    """Each component's weight and validation value alone (the teachers named by their caches, the
    ``scorers`` by their specs), then the fused teacher's (the ensemble's, with several teachers), and the
    cache ``out`` it was written to."""
    from rich.console import Console
    from rich.table import Table

    from teachers.fusion import teacher_names

    sources = dict(zip(teacher_names(len(caches)), map(str, caches))) | dict(scorers or {})
    table = Table("component", "source", "weight", f"{chosen.metric} alone",
                  title=f"fused teacher, weights chosen on {chosen.queries} validation queries")
    for name, value in chosen.alone.items():
        table.add_row(name, sources.get(name, ""), f"{chosen.weights.get(name, 0.0):g}", f"{value:.4f}")
    table.add_row("fused", "", "", f"{chosen.value:.4f}")
    console = Console()
    console.print(table)
    console.print(f"wrote {out}/", highlight=False)

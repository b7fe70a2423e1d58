"""The tables ``distill cascade build``, ``cascade run`` and ``evaluate`` print (rich, on stdout)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distill.cascade.search import SearchResult
    from distill.evaluation.runner import EvaluationResult


def print_search(result: SearchResult, baseline: dict[str, float], chosen: dict[str, float], first: str) -> None:
    """The Pareto frontier (chosen row marked) and the chosen cascade's metrics (ir-measures)."""
    from rich.console import Console
    from rich.table import Table

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
    for name, value in chosen.items():
        metrics.add_row(name, f"{baseline[name]:.4f}", f"{value:.4f}")
    console.print(metrics)


def print_cascade_run(cascade: str, budget_ms: float | None, where: str, summary: dict[str, Any]) -> None:
    """A cascade run's metrics next to its candidates', its latency and the stages it skipped."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{cascade}[/] on {where}, budget {'none' if budget_ms is None else f'{budget_ms:g} ms'}",
                  highlight=False)
    table = Table("metric", "candidates", "cascade")
    for name, value in summary["metrics"].items():
        table.add_row(name, f"{summary['candidate_metrics'][name]:.4f}", f"{value:.4f}")
    console.print(table)
    stats = summary["latency"]
    console.print(f"latency per query: p50 {stats['p50_ms']:.2f} ms, p95 {stats['p95_ms']:.2f} ms, "
                  f"mean {stats['mean_ms']:.2f} ms over {stats['queries']} queries", highlight=False)
    console.print("skipped (queries): " + ", ".join(f"{n} {c}" for n, c in stats["skipped"].items()),
                  highlight=False)


def print_summary(result: EvaluationResult, out: Path) -> None:
    """The metric means as a rich table on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result.dataset} (baseline {result.baseline})")
    columns = ["ranker", *result.metrics, "wins", "losses", "ties"]
    for column in columns:
        table.add_column(column, justify="left" if column == "ranker" else "right")
    for row in result.summary.select(columns).iter_rows():
        table.add_row(*[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row])
    console = Console()
    console.print(table)
    console.print(f"wrote {out}/ (report.html, report.md, summary.parquet, per_query.parquet, runs.parquet)")

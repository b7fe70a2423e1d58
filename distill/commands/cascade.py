"""``distill cascade build|run``: search a latency-bound cascade on validation queries, then run it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from distill.cascade_search import CascadeBuildConfig
from distill.commands import MAX_THREADS, parse_ints

DEFAULTS = CascadeBuildConfig()

if TYPE_CHECKING:
    from distill.cascade import StageCost
    from distill.cascade_search import SearchResult

log = logging.getLogger("distill")


def register(app: typer.Typer) -> None:
    cascade_app = typer.Typer(help="Latency-bound cascades of rerankers.", no_args_is_help=True)
    app.add_typer(cascade_app, name="cascade")

    @cascade_app.command("build")
    def build(
        data: Path = typer.Option(..., help="BEIR folder."),
        split: str = typer.Option(..., help="Validation queries: those of `qrels/<split>.tsv`."),
        run: Path = typer.Option(..., help="Their candidates (TREC run); the first stage cuts these."),
        stage: list[str] = typer.Option(..., help="NAME=SPEC, repeated. The first is the first stage "
                                        "(bm25=bm25: the run's own scores); the search picks among the others."),
        cost: list[str] = typer.Option([], help="NAME=MS_PER_PAIR[+MS_PER_QUERY]: a stage's cost; measured "
                                       "otherwise (caches and run files need this or --cost-from)."),
        cost_from: list[str] = typer.Option([], help="NAME=SPEC: measure stage NAME's cost on another ranker, "
                                            "e.g. the teacher model behind a teacher cache; repeatable [none]."),
        budget_ms: float = typer.Option(..., min=0.0, help="Expected latency allowed per query (ms)."),
        out: Path = typer.Option(..., help="Cascade spec (JSON) to write."),
        valid_fraction: float = typer.Option(DEFAULTS.valid_fraction, min=0.0, max=1.0,
                                             help="Share of the split's queries used."),
        seed: int = typer.Option(DEFAULTS.seed, help="Seed of the query sample."),
        metric: str = typer.Option(DEFAULTS.metric, help="Metric to maximise (nDCG@k or RR@k)."),
        cutoffs: str = typer.Option(",".join(map(str, DEFAULTS.cutoffs)), help="Cutoff grid, comma separated."),
        max_stages: int = typer.Option(DEFAULTS.max_stages, min=1,
                                       help="Longest cascade searched [all stages]."),
        latency_queries: int = typer.Option(DEFAULTS.latency_queries, min=1,
                                            help="Queries timed per stage when measuring costs."),
        latency_k: int = typer.Option(DEFAULTS.latency_k, min=2,
                                      help="Measure costs at k/10 and k candidates per query."),
        threads: int = typer.Option(DEFAULTS.threads, min=1, max=MAX_THREADS,
                                    help="torch threads while measuring costs [torch's default]."),
    ) -> None:
        """Score every stage once on the validation candidates, search all cascades, write the best."""
        from distill.cascade_search import CascadeBuildConfig, build_cascade
        from distill.inputs import load_dataset_and_run

        config = CascadeBuildConfig(valid_fraction=valid_fraction, seed=seed, metric=metric,
                                    cutoffs=tuple(parse_ints(cutoffs, "--cutoffs")), max_stages=max_stages,
                                    latency_queries=latency_queries, latency_k=latency_k, threads=threads)
        stages = _named(stage, "--stage")
        costs = _parse_costs(cost, stages)
        proxies = _named(cost_from, "--cost-from")
        dataset, candidates = load_dataset_and_run(data, split, run)
        built = build_cascade(dataset, candidates, stages, budget_ms, config, costs=costs, cost_from=proxies)
        built.cascade.provenance["run"] = str(run)
        _print_search(built.search, built.first_stage_metrics, built.metrics, next(iter(stages)))
        built.cascade.write_spec(out)
        log.info("wrote %s", out)

    @cascade_app.command("run")
    def run_cascade(
        spec: Path = typer.Argument(..., help="Cascade spec from `distill cascade build`."),
        data: Path = typer.Option(..., help="BEIR folder."),
        split: str = typer.Option("test", help="Queries of `qrels/<split>.tsv`."),
        run: Path = typer.Option(..., help="Candidates (TREC run)."),
        out: Path = typer.Option(..., help="TREC run to write (metrics and latency go to OUT.json)."),
        budget_ms: float = typer.Option(None, min=0.0, help="Override the spec's budget (ms per query) [the spec's]."),
        no_budget: bool = typer.Option(False, help="Run every stage for every query."),
        threads: int = typer.Option(None, min=1, max=MAX_THREADS,
                                    help="torch threads [torch's default]; match `build`'s."),
    ) -> None:
        """Rerank query by query through a cascade; print metrics, latency p50/p95 and skipped stages."""
        from dataclasses import replace

        from rich.console import Console
        from rich.table import Table

        from distill.cascade import Cascade
        from distill.errors import ConfigError
        from distill.inputs import load_dataset_and_run
        from distill.io import write_json_atomic
        from distill.manifest import library_versions
        from distill.metrics import metric_means
        from distill.runs import write_run

        if no_budget and budget_ms is not None:
            raise ConfigError("give --budget-ms or --no-budget, not both")
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        cascade = Cascade.read_spec(spec)
        if no_budget or budget_ms is not None:
            cascade = replace(cascade, budget_ms=budget_ms)
        dataset, candidates = load_dataset_and_run(data, split, run)
        cascade.prepare(dataset)
        ranked = cascade.rerank(dataset, candidates, per_query=True)
        write_run(ranked, out, tag="cascade")
        metrics, baseline = metric_means(dataset.qrels, ranked), metric_means(dataset.qrels, candidates)
        stats = cascade.stats.summary()

        console = Console()
        console.print(f"[bold]{cascade}[/] on {dataset.name}/{split}, budget "
                      f"{'none' if cascade.budget_ms is None else f'{cascade.budget_ms:g} ms'}", highlight=False)
        table = Table("metric", "candidates", "cascade")
        for name, value in metrics.items():
            table.add_row(name, f"{baseline[name]:.4f}", f"{value:.4f}")
        console.print(table)
        console.print(f"latency per query: p50 {stats['p50_ms']:.2f} ms, p95 {stats['p95_ms']:.2f} ms, "
                      f"mean {stats['mean_ms']:.2f} ms over {stats['queries']} queries", highlight=False)
        console.print("skipped (queries): " + ", ".join(f"{n} {c}" for n, c in stats["skipped"].items()),
                      highlight=False)
        write_json_atomic(out.with_name(out.name + ".json"), {
            "cascade": cascade.get_config_dict(), "spec": str(spec), "data": str(data), "split": split,
            "run": str(run), "metrics": metrics, "candidate_metrics": baseline, "latency": stats,
            "versions": library_versions(),
        })


def _named(texts: list[str], option: str) -> dict[str, str]:
    """``NAME=SPEC`` options -> specs by name, in order; a name given twice is an error."""
    from distill.errors import ConfigError
    from distill.rankers import parse_ranker_spec

    specs: dict[str, str] = {}
    for text in texts:
        name, spec = parse_ranker_spec(text)
        if name in specs:
            raise ConfigError(f"stage {name!r} given twice", field=option)
        specs[name] = spec
    return specs


def _parse_costs(texts: list[str], stages: dict[str, str]) -> dict[str, StageCost]:
    """``NAME=MS_PER_PAIR[+MS_PER_QUERY]`` options -> costs by stage name."""
    from distill.cascade import StageCost
    from distill.errors import ConfigError

    costs = {}
    for text in texts:
        name, _, value = text.partition("=")
        if name not in stages:
            raise ConfigError(f"--cost for unknown stage {name!r}; stages: {list(stages)}", field="--cost")
        per_pair, _, per_query = value.partition("+")
        try:
            costs[name] = StageCost(float(per_query or 0.0), float(per_pair))
        except ValueError:
            raise ConfigError(f"expected NAME=MS_PER_PAIR[+MS_PER_QUERY], got {text!r}", field="--cost") from None
    return costs


def _print_search(result: SearchResult, baseline: dict[str, float], chosen: dict[str, float], first: str) -> None:
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

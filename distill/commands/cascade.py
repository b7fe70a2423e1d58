"""``distill cascade build|run``: search a latency-bound cascade on validation queries, then run it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from distill.commands import parse_ints

if TYPE_CHECKING:
    import polars as pl

    from distill.cascade import Stage, StageCost
    from distill.cascade_search import SearchResult
    from distill.data import Dataset

log = logging.getLogger("distill")


def register(app: typer.Typer) -> None:
    cascade_app = typer.Typer(help="Latency-bound cascades of rerankers.", no_args_is_help=True)
    app.add_typer(cascade_app, name="cascade")

    @cascade_app.command("build")
    def build(
        data: Path = typer.Option(..., help="BEIR folder."),
        split: str = typer.Option(..., help="Validation queries: those of qrels/<split>.tsv."),
        run: Path = typer.Option(..., help="Their candidates (TREC run); the first stage cuts these."),
        stage: list[str] = typer.Option(..., help="NAME=SPEC, repeated. The first is the first stage "
                                        "(bm25=bm25: the run's own scores); the search picks among the others."),
        cost: list[str] = typer.Option([], help="NAME=MS_PER_PAIR[+MS_PER_QUERY]: a stage's cost; measured "
                                       "otherwise (caches and run files need this or --cost-from)."),
        cost_from: list[str] = typer.Option([], help="NAME=SPEC: measure stage NAME's cost on another ranker, "
                                            "e.g. the teacher model behind a teacher cache."),
        budget_ms: float = typer.Option(..., min=0.0, help="Expected latency allowed per query (ms)."),
        out: Path = typer.Option(..., help="Cascade spec (JSON) to write."),
        valid_fraction: float = typer.Option(1.0, min=0.0, max=1.0, help="Share of the split's queries used."),
        seed: int = typer.Option(0, help="Seed of the query sample."),
        metric: str = typer.Option("nDCG@10", help="Metric to maximise (nDCG@k or RR@k)."),
        cutoffs: str = typer.Option("1000,500,200,100,50,20,10", help="Cutoff grid, comma separated."),
        max_stages: int = typer.Option(None, min=1, help="Longest cascade searched (default: all stages)."),
        latency_queries: int = typer.Option(20, min=1, help="Queries timed per stage when measuring costs."),
        latency_k: int = typer.Option(100, min=2, help="Measure costs at k/10 and k candidates per query."),
        threads: int = typer.Option(None, min=1, help="torch threads while measuring costs (default: torch's)."),
    ) -> None:
        """Score every stage once on the validation candidates, search all cascades, write the best."""
        import time
        from dataclasses import asdict, replace

        from distill.cascade_search import replay, search_cascades
        from distill.inputs import load_dataset_and_run
        from distill.manifest import library_versions
        from distill.metrics import DEFAULT_METRICS, metric_means

        dataset, candidates = _validation_part(*load_dataset_and_run(data, split, run), valid_fraction, seed)
        stages = _load_stages(stage)
        costs = _parse_costs(cost, stages)
        proxies = _load_stages(cost_from, known=stages)
        for s in [*stages.values(), *proxies.values()]:
            if getattr(s.ranker, "prepare", None) is not None:
                s.ranker.prepare(dataset)  # one-off work (corpus embeddings) stays out of latency and scoring
        cost_source = {name: "given" for name in costs}
        for name, s in stages.items():
            if name not in costs:
                measured = proxies.get(name, s)
                costs[name], cost_source[name] = _measure_cost(measured, dataset, candidates, latency_queries,
                                                               latency_k, threads)
        scores = {name: _score(s, dataset, candidates) for name, s in stages.items()}
        first, grid = next(iter(stages)), parse_ints(cutoffs, "--cutoffs")
        result = search_cascades(scores, costs, dataset.qrels, first, budget_ms, grid, metric, max_stages)

        names = tuple(dict.fromkeys([metric, *DEFAULT_METRICS]))
        baseline = metric_means(dataset.qrels, scores[first], names)
        chosen = metric_means(dataset.qrels, replay(result.chosen, scores, dataset), names)
        _print_search(result, baseline, chosen, first)
        cascade = replace(
            result.chosen.to_cascade(stages), budget_ms=budget_ms,
            costs={name: costs[name] for name in result.chosen.stages},
            provenance={
                "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "data": str(data), "split": split, "run": str(run),
                "queries": dataset.queries.height, "valid_fraction": valid_fraction, "seed": seed,
                "metric": metric, "cutoff_grid": grid, "n_evaluated": result.n_evaluated,
                "chosen": {"cascade": str(result.chosen), "value": result.chosen.value,
                           "expected_latency_ms": result.chosen.latency_ms},
                "validation": chosen, "first_stage_validation": baseline,
                "frontier": result.frontier.select("cascade", metric, "latency_ms").to_dicts(),
                "candidate_stages": {n: {"spec": s.spec, "cost": asdict(costs[n]), "cost_source": cost_source[n]}
                                     for n, s in stages.items()},
                "versions": library_versions(),
            },
        )
        cascade.write_spec(out)
        log.info("wrote %s", out)

    @cascade_app.command("run")
    def run_cascade(
        spec: Path = typer.Argument(..., help="Cascade spec from `distill cascade build`."),
        data: Path = typer.Option(..., help="BEIR folder."),
        split: str = typer.Option("test", help="Queries of qrels/<split>.tsv."),
        run: Path = typer.Option(..., help="Candidates (TREC run)."),
        out: Path = typer.Option(..., help="TREC run to write (metrics and latency go to OUT.json)."),
        budget_ms: float = typer.Option(None, min=0.0, help="Override the spec's budget (ms per query)."),
        no_budget: bool = typer.Option(False, help="Run every stage for every query."),
        threads: int = typer.Option(None, min=1, help="torch threads (default: torch's); match `build`'s."),
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


def _validation_part(dataset: Dataset, candidates: pl.DataFrame, fraction: float,
                     seed: int) -> tuple[Dataset, pl.DataFrame]:
    """A seeded sample of ``fraction`` of the queries (all of them at 1.0)."""
    from dataclasses import replace

    import polars as pl

    from distill.errors import ConfigError
    from distill.schema import QID

    if fraction <= 0:
        raise ConfigError("--valid-fraction must be > 0")
    if fraction >= 1:
        return dataset, candidates
    qids = dataset.queries[QID].sort()
    keep = pl.DataFrame({QID: qids.sample(max(1, round(fraction * len(qids))), seed=seed)})
    semi = {"on": QID, "how": "semi"}
    return (replace(dataset, queries=dataset.queries.join(keep, **semi), qrels=dataset.qrels.join(keep, **semi)),
            candidates.join(keep, **semi))


def _load_stages(texts: list[str], known: dict[str, Stage] | None = None) -> dict[str, Stage]:
    """``NAME=SPEC`` options -> stages by name, in order; specs naming files become
    absolute so the written cascade spec works from any folder. With ``known``, names must be
    among its stages (``--cost-from``)."""
    from distill.cascade import stage
    from distill.errors import ConfigError
    from distill.rankers import load_ranker, parse_ranker_spec

    option = "--stage" if known is None else "--cost-from"
    stages: dict[str, Stage] = {}
    for text in texts:
        name, spec = parse_ranker_spec(text)
        if name in stages:
            raise ConfigError(f"stage {name!r} given twice", field=option)
        if known is not None and name not in known:
            raise ConfigError(f"unknown stage {name!r}; stages: {list(known)}", field=option)
        if Path(spec).exists():
            spec = str(Path(spec).resolve())
        stages[name] = stage(name, load_ranker(spec, name=name), spec)
    return stages


def _parse_costs(texts: list[str], stages: dict[str, Stage]) -> dict[str, StageCost]:
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


def _measure_cost(s: Stage, dataset: Dataset, candidates: pl.DataFrame, n_queries: int,
                  k: int, threads: int | None = None) -> tuple[StageCost, str]:
    """Measure a stage's cost with :func:`distill.latency.measure_latency` at ``k // 10`` and
    ``k`` candidates per query and fit fixed + per-pair parts; also say where it came from.
    Stored scores (a teacher cache, a run file) cost nothing to replay, so their real cost
    must be given."""
    from distill.cache import CachedRanker
    from distill.cascade import StageCost
    from distill.errors import ConfigError
    from distill.latency import measure_latency
    from distill.rankers import RunRanker
    from distill.schema import QID

    if isinstance(s.ranker, RunRanker) and s.ranker.scores is None:
        log.info("stage %s is the candidates' own order: cost 0 (give --cost %s=0+MS for the retrieval)",
                 s.name, s.name)
        return StageCost(), "candidate order: 0 unless given"
    if isinstance(s.ranker, (CachedRanker, RunRanker)):
        raise ConfigError(f"stage {s.name!r} replays stored scores, so its real cost is unknown: give "
                          f"--cost {s.name}=MS_PER_PAIR or --cost-from {s.name}=MODEL", field="--cost")
    lengths = candidates.group_by(QID).len()["len"]
    measured = []
    for size in sorted({max(1, k // 10), k}):
        latency = measure_latency(s.ranker, dataset, candidates, k=size, n_queries=n_queries, prepare=False,
                                  threads=threads)
        measured.append((float(lengths.clip(upper_bound=size).mean()), latency.mean_ms))
    cost = StageCost.fit(measured)
    log.info("stage %s: %.3f ms per query + %.4f ms per pair (measured)", s.name, cost.per_query_ms, cost.per_pair_ms)
    points = ", ".join(f"{pairs:.1f} pairs: {ms:.3f} ms" for pairs, ms in measured)
    return cost, f"measured on {s.spec} ({points})"


def _score(s: Stage, dataset: Dataset, candidates: pl.DataFrame) -> pl.DataFrame:
    """A stage's scores on all candidates, computed once for the whole search."""
    import time

    from distill.schema import DOCID, QID, SCORE

    start = time.perf_counter()
    scores = s.ranker.rerank(dataset, candidates).select(QID, DOCID, SCORE)
    log.info("stage %s scored %d candidates in %.1f s", s.name, scores.height, time.perf_counter() - start)
    return scores


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

"""``distill cascade build|run``: search a latency-bound cascade on validation queries, then run it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from distill.app import tasks
from distill.app.commands import MAX_THREADS, parse_ints
from distill.app.options import defaults
from distill.app.summaries import print_cascade_build, print_cascade_run
from distill.cascade.search import CascadeBuildConfig

DEFAULTS = CascadeBuildConfig()
_RUN = defaults(tasks.run_cascade_run)

if TYPE_CHECKING:
    from distill.cascade.model import StageCost
    from distill.cascade.search import BudgetShare


def register(app: typer.Typer) -> None:
    """Add the ``cascade`` group (``build``, ``run``) to ``app``."""
    cascade_app = typer.Typer(help="Latency-bound cascades of rerankers.", no_args_is_help=True)
    app.add_typer(cascade_app, name="cascade")
    cascade_app.command("build")(_build)
    cascade_app.command("run")(_run_cascade)


def _build(
    data: Path = typer.Option(..., help="BEIR folder."),
    split: str = typer.Option(..., help="Validation queries: those of `qrels/<split>.tsv`."),
    run: Path = typer.Option(..., help="Their candidates (TREC run); the first stage cuts these."),
    stage: list[str] = typer.Option(..., help="NAME=SPEC, repeated. The first is the first stage "
                                    "(bm25=bm25: the run's own scores); the search picks among the others."),
    cost: list[str] = typer.Option([], help="NAME=MS_PER_PAIR[+MS_PER_QUERY]: a stage's cost; measured "
                                   "otherwise (caches and run files need this or --cost-from)."),
    cost_from: list[str] = typer.Option([], help="NAME=SPEC: measure stage NAME's cost on another ranker, "
                                        "e.g. the teacher model behind a teacher cache; repeatable [none]."),
    budget_ms: float = typer.Option(None, min=0.0, help="Expected latency allowed per query (ms) [or "
                                    "--budget-share]."),
    budget_share: str = typer.Option(None, help="NAME=SHARE: the budget is this share of stage NAME's expected "
                                     "latency at --latency-k candidates, e.g. teacher=0.1 [or --budget-ms]."),
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
    calibration: str = typer.Option(DEFAULTS.calibration, help="How each stage's scores become probabilities "
                                    "of relevance (served as relevance_score): platt | isotonic."),
    calibration_depth: int = typer.Option(DEFAULTS.calibration_depth, min=1, help="Each stage's calibration "
                                          "is fitted on its top N documents per validation query."),
) -> None:
    """Score every stage once on the validation candidates, search all cascades, write the best."""
    config = CascadeBuildConfig(valid_fraction=valid_fraction, seed=seed, metric=metric, calibration=calibration,
                                calibration_depth=calibration_depth,
                                cutoffs=tuple(parse_ints(cutoffs, "--cutoffs")), max_stages=max_stages,
                                latency_queries=latency_queries, latency_k=latency_k, threads=threads)
    stages = _named(stage, "--stage")
    budget = _budget(budget_ms, budget_share)
    built = tasks.run_cascade_build(data, split, run, stages, budget, out, config,
                                    costs=_parse_costs(cost) or None,
                                    cost_from=_named(cost_from, "--cost-from") or None)
    print_cascade_build(built, out)


def _run_cascade(
    spec: Path = typer.Argument(..., help="Cascade spec from `distill cascade build`."),
    data: Path = typer.Option(..., help="BEIR folder."),
    split: str = typer.Option(_RUN["split"], help="Queries of `qrels/<split>.tsv`."),
    run: Path = typer.Option(..., help="Candidates (TREC run)."),
    out: Path = typer.Option(..., help="TREC run to write (metrics and latency go to OUT.json)."),
    budget_ms: float = typer.Option(None, min=0.0, help="Override the spec's budget (ms per query) [the spec's]."),
    no_budget: bool = typer.Option(False, help="Run every stage for every query."),
    threads: int = typer.Option(None, min=1, max=MAX_THREADS,
                                help="torch threads [torch's default]; match `build`'s."),
) -> None:
    """Rerank query by query through a cascade; print metrics, latency p50/p95 and skipped stages."""
    print_cascade_run(tasks.run_cascade_run(spec, data, run, out, split=split, budget_ms=budget_ms,
                                            no_budget=no_budget, threads=threads))


def _budget(budget_ms: float | None, budget_share: str | None) -> float | BudgetShare:
    """``--budget-ms`` or ``--budget-share NAME=SHARE``, exactly one."""
    from distill.cascade.search import BudgetShare
    from distill.core.errors import ConfigError

    if (budget_ms is None) == (budget_share is None):
        raise ConfigError("give exactly one of --budget-ms and --budget-share", field="--budget-ms")
    if budget_share is None:
        return budget_ms
    name, _, share = budget_share.partition("=")
    try:
        return BudgetShare(name.strip(), float(share))
    except ValueError:
        raise ConfigError(f"--budget-share must look like NAME=SHARE, got {budget_share!r}",
                          field="--budget-share") from None


def _named(texts: list[str], option: str) -> dict[str, str]:
    """``NAME=SPEC`` options -> specs by name, in order; a name given twice is an error."""
    from distill.core.errors import ConfigError
    from distill.rankers.loading import parse_ranker_spec

    specs: dict[str, str] = {}
    for text in texts:
        name, spec = parse_ranker_spec(text)
        if name in specs:
            raise ConfigError(f"stage {name!r} given twice", field=option)
        specs[name] = spec
    return specs


def _parse_costs(texts: list[str]) -> dict[str, StageCost]:
    """``NAME=MS_PER_PAIR[+MS_PER_QUERY]`` options -> costs by stage name."""
    from distill.cascade.model import StageCost
    from distill.core.errors import ConfigError

    costs = {}
    for text in texts:
        name, _, value = text.partition("=")
        per_pair, _, per_query = value.partition("+")
        try:
            costs[name] = StageCost(float(per_query or 0.0), float(per_pair))
        except ValueError:
            raise ConfigError(f"expected NAME=MS_PER_PAIR[+MS_PER_QUERY], got {text!r}", field="--cost") from None
    return costs

"""``distill evaluate`` (compare rankers, optionally time them, write the report) and
``distill report`` (re-render the report of a saved evaluation)."""

from __future__ import annotations

from pathlib import Path

import typer

from distill.app import tasks
from distill.app.commands import MAX_THREADS, parse_ints
from distill.app.options import defaults
from distill.app.summaries import print_evaluation
from distill.core.outputs import OVERWRITE_HELP
from distill.evaluation.runner import EvaluateConfig

DEFAULTS = EvaluateConfig()
_EVALUATE, _REPORT = defaults(tasks.run_evaluate), defaults(tasks.run_report)


def register(app: typer.Typer) -> None:
    @app.command()
    def evaluate(
        data: Path = typer.Option(..., help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/)."),
        split: str = typer.Option(_EVALUATE["split"], help="Queries of `qrels/<split>.tsv`."),
        run: Path = typer.Option(..., help="Candidate run (TREC) that every ranker reranks."),
        ranker: list[str] = typer.Option(..., "--ranker", help=(
            "NAME=SPEC, repeatable. SPEC: 'bm25' (the candidate run's scores), a TREC run file, "
            "a teacher cache folder, a model folder or a cascade spec.")),
        baseline: str = typer.Option(DEFAULTS.baseline, help="Ranker the others are tested against."),
        teacher: str = typer.Option(DEFAULTS.teacher, help="Ranker the others' agreement is measured against [none: "
                                                           "no agreement measured]."),
        metrics: str = typer.Option(",".join(DEFAULTS.metrics), help="Comma-separated ir-measures names."),
        k: int = typer.Option(DEFAULTS.k, min=1, help="Rerank the top k candidates of each query."),
        correction: str = typer.Option(DEFAULTS.correction, help="Multiple-testing correction: holm or bonferroni."),
        depths: str = typer.Option(",".join(map(str, DEFAULTS.depths)), help=(
            "Comma-separated rerank depths: the first metric is also computed over the run's top d of each "
            "query (k always).")),
        latency: bool = typer.Option(DEFAULTS.latency, "--latency/--no-latency", help="Also time each ranker."),
        latency_queries: int = typer.Option(DEFAULTS.latency_queries, min=1, help="Queries timed per ranker."),
        threads: int = typer.Option(DEFAULTS.threads, min=1, max=MAX_THREADS,
                                    help="Torch threads while timing."),
        out: Path = typer.Option(..., help="Evaluation folder to write (tables, runs, report.html)."),
        overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    ) -> None:
        """Rerank one candidate run with every ranker; write metrics, significance, agreement and a report."""
        config = EvaluateConfig(baseline=baseline, teacher=teacher, k=k, correction=correction, latency=latency,
                                metrics=tuple(m.strip() for m in metrics.split(",") if m.strip()),
                                depths=tuple(parse_ints(depths, "--depths")), latency_queries=latency_queries,
                                threads=threads)
        result = tasks.run_evaluate(data, run, dict(_parse_specs(ranker)), out, split=split, config=config,
                                    overwrite=overwrite)
        print_evaluation(result, out)

    @app.command()
    def report(
        eval_dir: Path = typer.Option(..., "--eval", help="Folder written by 'distill evaluate'."),
        out: Path = typer.Option(None, help="Folder for report.html and report.md [the --eval folder]."),
        title: str = typer.Option(_REPORT["title"], help="Report title."),
        overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    ) -> None:
        """Render report.html and report.md from a saved evaluation."""
        tasks.run_report(eval_dir, out, title, overwrite=overwrite)


def _parse_specs(options: list[str]) -> list[tuple[str, str]]:
    from distill.core.errors import ConfigError
    from distill.rankers.loading import parse_ranker_spec

    pairs = [parse_ranker_spec(option) for option in options]
    names = [name for name, _ in pairs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"ranker name(s) used twice: {duplicates}", field="--ranker")
    return pairs

"""``distill evaluate`` (compare rankers, optionally time them, write the report) and
``distill report`` (re-render the report of a saved evaluation)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from distill.commands import parse_ints


def register(app: typer.Typer) -> None:
    @app.command()
    def evaluate(
        data: Path = typer.Option(..., help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/)."),
        split: str = typer.Option("test", help="Queries of qrels/<split>.tsv."),
        run: Path = typer.Option(..., help="Candidate run (TREC) that every ranker reranks."),
        ranker: list[str] = typer.Option(..., "--ranker", help=(
            "NAME=SPEC, repeatable. SPEC: 'bm25' (the candidate run's scores), a TREC run file, "
            "a teacher cache folder or a model folder.")),
        baseline: str = typer.Option("bm25", help="Ranker the others are tested against."),
        teacher: str = typer.Option(None, help="Ranker the others' agreement is measured against."),
        metrics: str = typer.Option("nDCG@10,RR@10,R@100,AP", help="Comma-separated ir-measures names."),
        k: int = typer.Option(100, min=1, help="Rerank the top k candidates of each query."),
        correction: str = typer.Option("holm", help="Multiple-testing correction: holm or bonferroni."),
        depths: str = typer.Option("10,20,30,50", help=(
            "Comma-separated rerank depths: the first metric is also computed over the run's top d of each "
            "query (k always).")),
        latency: bool = typer.Option(False, "--latency/--no-latency", help="Also time each ranker."),
        latency_queries: int = typer.Option(50, min=1, help="Queries timed per ranker."),
        threads: int = typer.Option(1, min=1, help="Torch threads while timing."),
        out: Path = typer.Option(..., help="Evaluation folder to write (tables, runs, report.html)."),
    ) -> None:
        """Rerank one candidate run with every ranker; write metrics, significance, agreement and a report."""
        from distill.data import load_beir
        from distill.evaluate import canonical_metrics, check_roles, evaluate_rankers
        from distill.io import atomic_dir, write_json_atomic
        from distill.latency import save_latency
        from distill.manifest import frame_hash, write_manifest
        from distill.rankers import load_ranker
        from distill.report import write_report
        from distill.runs import read_run
        from distill.schema import cut

        specs = dict(_parse_specs(ranker))
        depth_list = tuple(parse_ints(depths, "--depths"))
        metric_names = canonical_metrics([m.strip() for m in metrics.split(",") if m.strip()])
        check_roles(list(specs), baseline, teacher, correction)
        dataset = load_beir(data, split)
        candidates = cut(read_run(run), k)
        with _progress() as progress:
            task = progress.add_task("loading rankers", total=len(specs))
            rankers = {}
            for name, spec in specs.items():
                progress.update(task, description=f"loading {name}")
                rankers[name] = load_ranker(spec, name=name)
                progress.advance(task)
            task = progress.add_task("reranking", total=len(rankers))

            def on_ranker(name: str) -> None:
                progress.update(task, description=f"reranking with {name}",
                                completed=list(rankers).index(name))

            result = evaluate_rankers(dataset, candidates, rankers, baseline, metric_names, teacher,
                                      correction, on_ranker=on_ranker, depths=depth_list)
            progress.update(task, completed=len(rankers))
            skipped = _cascade_skips(rankers)
            timings = _measure(rankers, specs, dataset, candidates, k, latency_queries, threads, progress) \
                if latency else {}
        configs = {name: r.get_config_dict() for name, r in rankers.items()}
        importance = _feature_importance(specs)
        with atomic_dir(out) as tmp:
            result.save(tmp)
            save_latency(timings, tmp / "latency.json")
            write_json_atomic(tmp / "configs.json", configs)
            write_json_atomic(tmp / "feature_importance.json", importance)
            write_report(tmp, result, timings, configs, importance)
            write_manifest(tmp, "evaluation", {
                "data": str(data), "split": split, "run": str(run), "rankers": specs, "baseline": baseline,
                "teacher": teacher, "metrics": list(metric_names), "k": k, "depths": list(depth_list),
                "correction": correction,
                "latency": latency, "latency_queries": latency_queries, "threads": threads,
            }, candidates_hash=frame_hash(candidates.select("qid", "docid")), cascade_skipped=skipped)
        _print_summary(result, out)

    @app.command()
    def report(
        eval_dir: Path = typer.Option(..., "--eval", help="Folder written by 'distill evaluate'."),
        out: Path = typer.Option(None, help="Folder for report.html and report.md (default: --eval)."),
        title: str = typer.Option("distill evaluation", help="Report title."),
    ) -> None:
        """Render report.html and report.md from a saved evaluation."""
        import logging

        from distill.evaluate import EvaluationResult
        from distill.latency import load_latency
        from distill.manifest import write_manifest
        from distill.report import write_report

        result = EvaluationResult.load(eval_dir)
        configs = _read_json(eval_dir / "configs.json")
        importance = _read_json(eval_dir / "feature_importance.json")
        target = out or eval_dir
        html_path, md_path = write_report(target, result, load_latency(eval_dir / "latency.json"), configs,
                                          importance, title=title)
        if target.resolve() != eval_dir.resolve():
            write_manifest(target, "report", {"eval": str(eval_dir), "title": title})
        logging.getLogger("distill").info("wrote %s and %s", html_path, md_path)


def _parse_specs(options: list[str]) -> list[tuple[str, str]]:
    from distill.errors import ConfigError
    from distill.rankers import parse_ranker_spec

    pairs = [parse_ranker_spec(option) for option in options]
    names = [name for name, _ in pairs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"ranker name(s) used twice: {duplicates}", field="--ranker")
    return pairs


def _progress():
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=Console(stderr=True), transient=True)


def _measure(rankers: dict, specs: dict[str, str], dataset, candidates, k: int, n_queries: int, threads: int,
             progress) -> dict:
    """Time every ranker with its ``prepare`` step; a bi-encoder is timed again without
    precomputed document embeddings (encoding documents per query)."""
    from distill.latency import measure_latency
    from distill.rankers import load_ranker, model_folder

    timings = {}
    task = progress.add_task("timing", total=len(rankers))
    for name, ranker in rankers.items():
        progress.update(task, description=f"timing {name}")
        folder = model_folder(specs[name])
        live = ranker.live() if hasattr(ranker, "live") else None
        if live is not None:  # a teacher cache: time the teacher model it replays
            ranker, folder = live, Path(live.model_name_or_path)
        timings[name] = measure_latency(ranker, dataset, candidates, k=k, n_queries=n_queries, prepare=True,
                                        threads=threads, model_path=folder)
        if getattr(ranker, "precompute", False):  # a bi-encoder (see students.bi_encoder.BiEncoderRanker)
            cold = load_ranker(specs[name], name=name, precompute=False)
            timings[f"{name} (no precompute)"] = measure_latency(
                cold, dataset, candidates, k=k, n_queries=n_queries, prepare=False, threads=threads,
                model_path=folder)
        progress.advance(task)
    return timings


def _cascade_skips(rankers: dict) -> dict[str, dict[str, int]]:
    """Per cascade ranker, how many queries skipped each stage to stay within its budget (with a
    warning: its metrics are then those of a shorter cascade on those queries)."""
    import logging

    from distill.cascade import Cascade

    skips = {name: dict(r.stats.skipped) for name, r in rankers.items() if isinstance(r, Cascade)}
    for name, counts in skips.items():
        if any(counts.values()):
            logging.getLogger("distill").warning(
                "cascade %r skipped stages to stay within its %.1f ms budget (queries per stage: %s); its "
                "metrics are those of the shorter cascade on those queries", name, rankers[name].budget_ms, counts)
    return skips


def _feature_importance(specs: dict[str, str]) -> dict[str, dict[str, float]]:
    from distill.rankers import lightgbm_feature_importance, model_kind

    return {name: lightgbm_feature_importance(spec) for name, spec in specs.items()
            if Path(spec).is_dir() and model_kind(spec) == "lightgbm-student"}


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _print_summary(result, out: Path) -> None:
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

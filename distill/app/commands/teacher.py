"""``distill score-teacher`` and ``distill cache info|merge|verify|import|export``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from distill.app import tasks
from distill.app.options import config_options, with_options
from teachers.scoring import TeacherScoringConfig


def register(app: typer.Typer) -> None:
    """Add ``score-teacher`` and the ``cache`` group to ``app``."""
    app.command("score-teacher")(_score_teacher)
    cache_app = typer.Typer(help="Inspect, combine, check, import and export teacher caches.", no_args_is_help=True)
    app.add_typer(cache_app, name="cache")
    for name, command in (("info", _cache_info), ("merge", _cache_merge), ("verify", _cache_verify),
                          ("import", _cache_import), ("export", _cache_export)):
        cache_app.command(name)(command)


@with_options(config_options(TeacherScoringConfig))
def _score_teacher(
    teacher: str = typer.Option(..., help="Teacher model: local folder or hub id."),
    cache: Path = typer.Option(..., help="Cache folder (created, or resumed)."),
    data: Path = typer.Option(None, help="BEIR folder [needed unless --pairs]."),
    split: str = typer.Option(None, help="Queries of `qrels/<split>.tsv` [test, unless --queries]."),
    queries: Path = typer.Option(None, help="Unjudged queries (BEIR queries.jsonl or TSV `qid<TAB>text`), added "
                                 "to --split's when both are given [none]."),
    run: Path = typer.Option(None, help="Candidates as a TREC run (e.g. from `distill candidates`) [needed with "
                                        "--data]."),
    pairs: Path = typer.Option(None, help="Or: candidate JSONL (query/positive/negative) or triples TSV [none: "
                                          "--data and --run]."),
    *,
    address: str = typer.Option(None, help="--engine ray: the cluster, auto or HOST:PORT of its head [a new local "
                                "Ray on this machine's CPUs and GPUs]."),
    num_workers: int = typer.Option(None, min=1, help="--engine ray: workers, one teacher each [1]."),
    gpus_per_worker: float = typer.Option(None, min=0, help="--engine ray: GPUs per worker [0]."),
    **settings: Any,
) -> None:
    """Score candidate pairs with a teacher into a resumable cache of raw logits."""
    ray_options = {"address": address, "num_workers": num_workers, "gpus_per_worker": gpus_per_worker}
    tasks.run_score_teacher(teacher, cache, data=data, split=split, queries=queries, run=run, pairs=pairs,
                            ray_options={k: v for k, v in ray_options.items() if v is not None} or None,
                            **settings)


def _cache_info(folder: Path = typer.Argument(..., help="Cache folder.")) -> None:
    """Rows, queries, teacher, coverage of each candidate set, and the scale of the teacher's scores."""
    from distill.app.summaries import print_cache_info

    print_cache_info(folder, *tasks.run_cache_info(folder))


def _cache_merge(
    out: Path = typer.Option(..., help="Merged cache folder (created, or added to)."),
    sources: list[Path] = typer.Argument(..., help="Cache folders of the same teacher."),
) -> None:
    """Join caches of one teacher, e.g. the parts scored with --shard i/N."""
    tasks.run_cache_merge(out, sources)


def _cache_verify(
    folder: Path = typer.Argument(..., help="Cache folder."),
    repair: bool = typer.Option(False, help="Move unreadable files into quarantine/ (their pairs are scored "
                                "again), rebuild a lost manifest from the shards, remove killed writers' "
                                "temporary files."),
) -> None:
    """Check every shard, candidate file and the manifest of a cache; --repair mends what a crash broke."""
    from distill.core.errors import InputError

    check, done = tasks.run_cache_verify(folder, repair=repair)
    for line in done:
        typer.echo(f"repaired: {line}")
    for line in check.problems:
        typer.echo(f"problem: {line}")
    if check.problems:
        raise InputError(f"{len(check.problems)} problem(s); `distill cache verify --repair {folder}` sets "
                         "bad files aside and rebuilds the manifest", path=folder)
    typer.echo(f"{folder}: ok: {len(check.shards)} shard(s), {check.rows} rows, "
               f"{len(check.candidates)} candidate set(s)"
               + (f", {check.temporaries} temporary file(s) of a writer" if check.temporaries else ""))


def _cache_import(
    files: list[Path] = typer.Argument(..., help="Files of scores (or rankings) computed elsewhere: TREC runs, "
                                       "JSONL, Parquet or TSV (docs/data-formats.md)."),
    data: Path = typer.Option(..., help="BEIR folder whose corpus and queries the files' ids or texts are of."),
    teacher_name: str = typer.Option(..., help="Name recorded as the cache's teacher (e.g. the model that "
                                     "scored the files)."),
    out: Path = typer.Option(..., help="Cache folder (created; an earlier import of the same files is "
                             "replaced)."),
    format: str = typer.Option(None, "--format", help="trec, jsonl, parquet or tsv [from each file's "
                               "extension]."),
    queries: Path = typer.Option(None, help="Query texts besides --data's (BEIR queries.jsonl or TSV "
                                 "`qid<TAB>text`) [none]."),
    ranks_only: bool = typer.Option(False, help="The files rank without scores (an LLM's listwise run): the "
                                    "cache holds -ln(position) and refuses MarginMSE, MSE and BCE."),
) -> None:
    """Import a teacher's scores computed elsewhere as a teacher cache."""
    result = tasks.run_cache_import(files, data, teacher_name, out, format=format, queries=queries,
                                    ranks_only=ranks_only)
    skipped = f"; {result.skipped_queries} queries without text skipped" if result.skipped_queries else ""
    typer.echo(f"{out}: imported {result.pairs} {'ranks' if ranks_only else 'scores'} of {result.queries} "
               f"queries from {len(files)} file(s) as teacher {teacher_name!r}{skipped}")


def _cache_export(
    cache: Path = typer.Argument(..., help="Cache folder."),
    out: Path = typer.Option(..., help="File to write."),
    format: str = typer.Option(None, "--format", help="trec or parquet [from --out's extension]."),
) -> None:
    """Write a cache's scores as a TREC run or a Parquet file, which `distill cache import` reads back."""
    result = tasks.run_cache_export(cache, out, format=format)
    typer.echo(f"{out}: {result.rows} scores of {result.queries} queries ({result.format})")

"""``distill fuse-teacher``: a teacher (or an ensemble of teachers) that cannot fall below the first stage on
validation."""

from __future__ import annotations

from pathlib import Path

import typer

from distill.app import tasks
from distill.app.options import defaults

_D = defaults(tasks.run_fuse_teacher)


def register(app: typer.Typer) -> None:
    @app.command("fuse-teacher")
    def fuse_teacher_command(
        cache: list[Path] = typer.Option(..., "--cache", help="The trained teacher's cache (with the validation "
                                         "candidates scored); repeatable: several teachers' caches (scored or "
                                         "imported) are fused as an ensemble."),
        data: Path = typer.Option(..., help="BEIR folder the cache was scored on."),
        run: list[Path] = typer.Option(..., "--run", help="First-stage runs whose scores are fused (every "
                                       "candidate set in the cache: train, valid, test); repeatable."),
        valid_split: str = typer.Option(_D["valid_split"], help="Judged queries the weights are chosen on."),
        scorer: list[str] = typer.Option([], "--scorer", help="NAME=SPEC: another ranker (e.g. a zero-shot "
                                         "bi-encoder folder) fused too, applied to the cached pairs; repeatable "
                                         "[none]."),
        queries: Path = typer.Option(None, help="Unjudged queries whose pairs the cache holds too (for --scorer) "
                                                "[none]."),
        step: float = typer.Option(_D["step"], help="Weights are searched on a grid of this step (summing to 1)."),
        out: Path = typer.Option(..., help="Cache folder of the fused scores (students read it): new, empty, or a "
                                         "teacher cache they are added to."),
    ) -> None:
        """Per-query z-scored interpolation of the teacher (or of several: an ensemble) with BM25 (and other
        scorers), the weights chosen on --valid-split's nDCG@10 and recorded in the fused cache's fingerprint."""
        from distill.app.summaries import print_fused_teacher
        from distill.rankers.loading import parse_ranker_spec
        from teachers.fusion import check_fused_output

        check_fused_output(out, datasets=[data])  # before the scorers' and the weights' work
        teachers = cache[0] if len(cache) == 1 else cache  # one teacher: the call the pipeline's step makes
        scorers = dict(parse_ranker_spec(item) for item in scorer) or None
        chosen = tasks.run_fuse_teacher(teachers, data, run, out, valid_split=valid_split, scorers=scorers,
                                        queries=queries, step=step)
        print_fused_teacher(chosen, cache, out, scorers)

"""The whole distillation pipeline, step by step.

``distill demo`` and the benchmark scripts run these steps. Each calls one function of
:mod:`distill.app.tasks`, the function behind a ``distill`` command, and is printed first as that
command line (the README's), for users to copy. A step whose output already exists is skipped, so an
interrupted pipeline resumes.

Here: the runner (:func:`run_pipeline`), which also prints what each step's command prints. The
settings are in :mod:`distill.app.pipeline_config`, the BEIR view a run works on
(:func:`split_view`) in :mod:`distill.app.data_view`, the steps of a configuration in
:mod:`distill.app.pipeline_plan`, a step and its command line in :mod:`distill.app.pipeline_step`
and what ``pipeline.json`` records in :mod:`distill.app.pipeline_record`; their names are importable
from here too.
"""

from __future__ import annotations

from pathlib import Path

from distill.app.data_view import VIEW, split_view
from distill.app.pipeline_config import (
    BUILTIN_DEMO,
    TITLE_SPLIT,
    VALID_FRACTION,
    PipelineConfig,
    default_init,
    demo_config,
    student_queries,
)
from distill.app.pipeline_plan import CHECKPOINT_STEPS, STUDENT_CACHE, plan
from distill.app.pipeline_record import cascade_budget, resume_record, student_cache, student_validation
from distill.app.pipeline_step import Step, command_line
from distill.core.outputs import check_folder_output

__all__ = ["BUILTIN_DEMO", "CHECKPOINT_STEPS", "PIPELINE", "STUDENT_CACHE", "TITLE_SPLIT", "VALID_FRACTION", "VIEW",
           "PipelineConfig", "Step", "cascade_budget", "check_imported", "command_line", "default_init", "demo_config",
           "plan", "prepare_data", "report_students", "resume_record", "run_pipeline", "split_view", "student_cache",
           "student_queries", "student_validation"]

PIPELINE = "pipeline"  # the output kind (distill.core.outputs.MARKERS)


def prepare_data(cfg: PipelineConfig) -> Path:
    """The BEIR view the pipeline works on: train split into train + valid, test as it is."""
    source = cfg.data
    if source is None:
        from distill.data.synthetic import make_synthetic_beir

        source = cfg.out / "source"
        if not (source / "corpus.jsonl").exists():
            make_synthetic_beir(source, n_topics=cfg.topics, queries_per_topic=cfg.queries_per_topic,
                                seed=cfg.seed % 1000, overwrite=cfg.overwrite)
    return split_view(Path(source), cfg.out / "data", "train", cfg.valid_fraction, cfg.title_queries, cfg.seed,
                      overwrite=cfg.overwrite)


def run_pipeline(cfg: PipelineConfig) -> dict:
    """Run every step not yet done; returns (and writes to ``out/pipeline.json``) what ran and how long."""
    from rich.console import Console

    from distill.app.step_clock import StepClock
    from distill.core.io import write_json_atomic
    from distill.core.manifest import library_versions

    console = Console(stderr=True)
    check_folder_output(cfg.out, PIPELINE, overwrite=cfg.overwrite)  # a rerun goes on in its own folder
    record_path = cfg.out / "pipeline.json"
    record = resume_record(record_path, {"config": cfg.to_dict(), "versions": library_versions(), "steps": {}})
    write_json_atomic(record_path, record)  # the folder's marker, before any step writes into it
    data = prepare_data(cfg)
    steps = plan(cfg, data)
    for number, step in enumerate(steps, start=1):
        console.rule(f"[bold]{number}/{len(steps)} {step.name}")
        if step.output is not None and step.output.exists():
            console.print(f"done already: {step.output}")
            continue
        if STUDENT_CACHE in step.kwargs.values():
            chosen = student_cache(cfg.out)
            record["teacher_choice"] = chosen
            step.bind(STUDENT_CACHE, Path(chosen["cache"]))
        checkpoints = step.output.with_name(f"{step.output.name}.checkpoints") if step.output else None
        if checkpoints is not None and any(checkpoints.glob("checkpoint-*")):
            step.resume()  # a model step stopped mid-epoch goes on from its last checkpoint
        console.print(f"[dim]$ {step.command()}[/]", highlight=False, soft_wrap=True)
        # its time, summed over attempts (over every rerun for a step with no output: it resumes a cache)
        with StepClock(record, record_path, step.name, step.command(), cumulative=step.output is None):
            result = step.run()
        if step.name == "import-teacher":
            check_imported(cfg.out)
        if step.name == "cascade-build":
            record["budget"] = cascade_budget(result)
            write_json_atomic(record_path, record)
    record["students"] = student_validation(cfg.out / "models")
    write_json_atomic(record_path, record)
    report_students(record["students"], console, allow_collapse=cfg.allow_collapse)
    return record


def check_imported(out: Path) -> None:
    """Refuse imported scores that miss candidates of the valid or test run (fusion, the cascade and ``evaluate``
    replay the teacher on all of them), saying which file lists the pairs to score; the students learn from the
    train queries' pairs the file has."""
    from distill.cache.store import TeacherCache
    from distill.core.errors import InputError
    from distill.data.runs import read_run

    cache = TeacherCache.open(out / "cache")
    for split in ("valid", "test"):
        run = out / "runs" / f"{split}.trec"
        missing = cache.missing(read_run(run)).height
        if missing:
            raise InputError(f"the imported scores lack {missing} candidate pairs of the {split} queries: score "
                             f"every pair of {run} with the teacher, add them to the file and run again after "
                             f"removing {cache.folder}", path=cache.folder)


def report_students(students: dict[str, dict], console, *, allow_collapse: bool) -> None:
    """Print each student's validation; a collapsed one fails the run unless ``allow_collapse``."""
    from students.validation import StudentCollapseError

    for name, v in students.items():
        kept = f", round {v['kept_round']} kept" if v.get("kept_round") else ""
        console.print(f"validation {name}: {v['metric']} {v['value']:.4f} (first stage {v['first_stage']:.4f}"
                      f"{kept})" + ("  [bold red]COLLAPSED[/]" if v["collapsed"] else ""))
    collapsed = {name: v["problems"] for name, v in students.items() if v["collapsed"]}
    if collapsed and not allow_collapse:
        raise StudentCollapseError("students collapsed on validation: " + "; ".join(
            f"{name}: {', '.join(p)}" for name, p in collapsed.items()) + " (the run finished; "
            "--allow-collapse accepts it)")

"""The whole distillation pipeline, step by step.

``distill demo`` and the benchmark scripts run these steps. Each calls one function of
:mod:`distill.app.tasks` (or :func:`students.train.select_student`), the function behind a
``distill`` command, and is printed first as that command line (the README's), for users to
copy. A step whose output already exists is skipped, so an interrupted pipeline resumes.

Here: the BEIR view a run works on (:func:`split_view`) and the runner (:func:`run_pipeline`).
The settings are in :mod:`distill.app.pipeline_config`, the steps of a configuration in
:mod:`distill.app.pipeline_plan`, a step and its command line in :mod:`distill.app.pipeline_step`
and what ``pipeline.json`` records in :mod:`distill.app.pipeline_record`; their names are
importable from here too."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

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
from distill.core.errors import ConfigError, InputError
from distill.core.io import atomic_dir
from distill.core.outputs import check_folder_output, check_output
from distill.data.beir import load_qrels

__all__ = ["BUILTIN_DEMO", "CHECKPOINT_STEPS", "PIPELINE", "STUDENT_CACHE", "TITLE_SPLIT", "VALID_FRACTION", "VIEW",
           "PipelineConfig", "Step", "cascade_budget", "command_line", "default_init", "demo_config", "plan",
           "prepare_data", "report_students", "resume_record", "run_pipeline", "split_view", "student_cache",
           "student_queries", "student_validation"]

VIEW, PIPELINE = "split-view", "pipeline"  # output kinds (distill.core.outputs.MARKERS)


def split_view(source: Path, out: Path, split: str = "train", valid_fraction: float = VALID_FRACTION,
               title_queries: int = 0, seed: int = 42, *, overwrite: bool = False) -> Path:
    """A BEIR folder at ``out`` whose ``split`` qrels are divided into ``train`` and ``valid``.

    Corpus and queries are symlinked (never copied); ``test`` qrels are linked as they are.
    A query goes to ``valid`` when ``crc32(qid) % 1000 < valid_fraction * 1000``: stable
    across machines and library versions.

    With ``title_queries=N``, N documents' titles also become queries (``title:<docid>``, judged
    relevant to their own document), written to ``queries.jsonl`` and, with ``train``'s
    queries, to ``qrels/train_titles.tsv``. Unlabelled in-domain queries cost only teacher
    time, and the teacher's scores over a title's BM25 candidates are what a student learns from.
    ``out`` may not be, hold or lie inside ``source``; it replaces only an earlier view (or ``overwrite``).
    """
    check_output(out, datasets=[source], folder=True)
    settings = {"source": str(Path(source).resolve()), "split": split, "valid_fraction": valid_fraction,
                "title_queries": title_queries, "seed": seed if title_queries else None}
    if (out / "qrels" / "valid.tsv").exists():
        recorded = out / "view.json"
        earlier = json.loads(recorded.read_text()) if recorded.exists() else settings  # older views have none
        # the source folder may have moved; the split itself must be the same
        if {k: v for k, v in earlier.items() if k != "source"} != {k: v for k, v in settings.items() if k != "source"}:
            raise ConfigError(f"{out} was built with other settings ({recorded.read_text().strip()}); "
                              f"use another --out or delete it")
        return out
    source = Path(source).resolve()
    qrels = load_qrels(source / "qrels" / f"{split}.tsv")
    cut = int(round(valid_fraction * 1000))
    is_valid = [zlib.crc32(q.encode()) % 1000 < cut for q in qrels["qid"].to_list()]
    with atomic_dir(out, kind=VIEW, overwrite=overwrite) as tmp:
        (tmp / "qrels").mkdir()
        os.symlink(source / "corpus.jsonl", tmp / "corpus.jsonl")
        for other in sorted((source / "qrels").glob("*.tsv")):
            if other.stem not in (split, "train", "valid"):
                os.symlink(other, tmp / "qrels" / other.name)
        import polars as pl

        mask = pl.Series(is_valid)
        parts = {"train": qrels.filter(~mask), "valid": qrels.filter(mask)}
        if title_queries:
            titles = _title_queries(source, title_queries, seed)
            _write_queries(tmp / "queries.jsonl", source / "queries.jsonl", titles.queries)
            parts[TITLE_SPLIT] = pl.concat([parts["train"], titles.qrels.cast(parts["train"].schema)])
        else:
            os.symlink(source / "queries.jsonl", tmp / "queries.jsonl")
        for name, part in parts.items():
            if part.height == 0:
                raise InputError(f"no {name} queries left after holding out {valid_fraction:.0%}",
                                 path=source / "qrels" / f"{split}.tsv")
            lines = ["query-id\tcorpus-id\tscore", *(f"{q}\t{d}\t{r}" for q, d, r in part.iter_rows())]
            (tmp / "qrels" / f"{name}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (tmp / "view.json").write_text(json.dumps(settings) + "\n", encoding="utf-8")
    return out


def _title_queries(source: Path, n: int, seed: int):
    """N sampled documents' titles as queries ``title:<docid>``, each judged relevant to its document."""
    from distill.data.beir import load_beir
    from teachers.train import weak_title_dataset

    dataset = load_beir(source, split=None)
    titles = weak_title_dataset(dataset, n, seed)
    clash = titles.queries.join(dataset.queries, on="qid", how="semi")
    if clash.height:
        raise InputError(f"query id {clash['qid'][0]!r} already exists: title queries need their own ids",
                         path=source / "queries.jsonl")
    return titles


def _write_queries(path: Path, original: Path, extra) -> None:
    """``original``'s lines followed by ``extra``'s queries, in BEIR's JSONL."""
    lines = [line for line in original.read_text(encoding="utf-8").splitlines() if line.strip()]
    lines += [json.dumps({"_id": q, "text": t}) for q, t in extra.iter_rows()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


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
        if step.name == "cascade-build":
            record["budget"] = cascade_budget(result)
            write_json_atomic(record_path, record)
    record["students"] = student_validation(cfg.out / "models")
    write_json_atomic(record_path, record)
    report_students(record["students"], console, allow_collapse=cfg.allow_collapse)
    return record


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

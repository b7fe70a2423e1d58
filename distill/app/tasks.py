"""What each ``distill`` command does, as one public function of files and settings.

A command parses its options and calls its function here; :mod:`distill.app.pipeline` calls the
same functions, and a notebook can too: ``tasks.candidates(data, out, split="test", k=100)``
does what ``distill candidates --data DATA --split test --k 100 --out OUT`` does. The arguments
are the command's options (``--max-length`` is ``max_length``, with its default), parsed: a
repeatable ``NAME=SPEC`` option is a dict, evaluate and cascade build take their config
dataclasses, and train-teacher's and score-teacher's settings are keyword arguments defaulting to
their config dataclasses' fields (:mod:`teachers.train`, :mod:`teachers.scoring`), where the
commands' options come from too. Heavy libraries are imported inside the functions, as in the commands.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill.app.student_tasks import STUDENTS, parse_loss_params, teacher_path, train_student  # noqa: F401
from distill.app.summaries import print_cascade_run, print_search, print_summary
from distill.core.errors import ConfigError
from distill.core.outputs import check_folder, check_folder_output, check_output

if TYPE_CHECKING:
    import polars as pl

    from distill.cascade.model import StageCost
    from distill.cascade.search import BudgetShare, CascadeBuild, CascadeBuildConfig
    from distill.evaluation.runner import EvaluateConfig, EvaluationResult
    from teachers.fusion import FusedWeights
    from teachers.scoring import TeacherScoring

log = logging.getLogger("distill")


def pseudo_queries(data: Path, out: Path, kind: str = "auto", *, max_queries: int | None = None,
                   seed: int = 42) -> Path:
    """``distill pseudo-queries``: one query per document of ``data`` from its own text, written to ``out``."""
    from distill.data.querysets import pseudo_queries_for, read_queries_file

    check_output(out, datasets=[data])
    path = pseudo_queries_for(data, out, kind, max_queries=max_queries, seed=seed)
    log.info("wrote %d pseudo-queries to %s", read_queries_file(path).height, path)
    return path


def candidates(data: Path, out: Path, *, split: str | None = None, queries: Path | None = None, k: int = 100,
               add_positives: bool = False) -> pl.DataFrame:
    """``distill candidates``: BM25's top ``k`` per query of ``split`` (test unless ``queries`` is given)
    and of the queries file ``queries``, written to ``out`` as a TREC run."""
    from distill.data.bm25 import bm25_run
    from distill.data.querysets import load_training_queries
    from distill.data.runs import write_run

    check_output(out, inputs=[queries], datasets=[data])
    dataset = load_training_queries(data, split if split or queries else "test", queries)
    run = bm25_run(dataset, k, add_positives=add_positives)
    write_run(run, out, tag="bm25")
    log.info("wrote %d candidates for %d queries to %s", run.height, run["qid"].n_unique(), out)
    return run


def train_teacher(data: Path, out: Path, *, init: str, split: str = "train", quick: bool = False,
                  resume: bool = False, overwrite: bool = False, **settings: Any) -> Path:
    """``distill train-teacher``: fine-tune ``init`` on ``split``'s qrels with BM25 hard negatives.

    ``settings`` are train-teacher's other options by name (``epochs=1``, ``negatives=3``, ...: the fields
    of :class:`~teachers.train.TeacherTrainConfig` and :class:`~teachers.train.TeacherTrainSettings`
    with a help text): one left out or None is its default, or its --quick value with ``quick``
    (:meth:`~teachers.train.TeacherTrainConfig.from_settings`); ``patience=0`` trains every epoch;
    ``resume`` continues from the latest checkpoint in ``<out>.checkpoints``; ``overwrite`` replaces an
    ``out`` that is no earlier teacher (see :mod:`distill.core.outputs`).
    """
    from distill.data.beir import load_beir
    from teachers.train import KIND, TeacherTrainConfig
    from teachers.train import train_teacher as train

    check_folder(out, KIND, overwrite=overwrite, inputs=[init], datasets=[data])
    config = TeacherTrainConfig.from_settings(quick=quick, resume=resume, **settings)
    return train(load_beir(data, split), out, init=init, config=config, overwrite=overwrite)


def score_teacher(teacher: str, cache: Path, *, data: Path | None = None, split: str | None = None,
                  queries: Path | None = None, run: Path | None = None, pairs: Path | None = None,
                  ray_options: Mapping[str, Any] | None = None, **settings: Any) -> TeacherScoring:
    """``distill score-teacher``: score the candidates (``data`` + ``run``, or ``pairs``) the cache lacks.

    ``split`` defaults to test unless ``queries`` is given; ``settings`` are the fields of
    :class:`~teachers.scoring.TeacherScoringConfig` (``max_length=256``, ``dtype="fp32"``, ...), its
    defaults where left out; ``ray_options`` (address, num_workers, gpus_per_worker) are for
    ``engine="ray"`` only.
    """
    from distill.cache.scoring import parse_shard
    from distill.data.inputs import load_dataset_and_run
    from teachers.scoring import TeacherScoringConfig
    from teachers.scoring import score_teacher as score

    config = TeacherScoringConfig(**settings)
    shard_spec = parse_shard(config.shard)
    if ray_options and config.engine != "ray":
        raise ConfigError(f"--{next(iter(ray_options)).replace('_', '-')} applies to --engine ray only")
    dataset, pool = load_dataset_and_run(data, split if split or queries else "test", run, pairs, queries)
    return score(teacher, dataset, pool, cache, source=str(run or pairs), shard=shard_spec,
                 flush_pairs=config.flush_pairs, sanity_check=config.sanity_check, engine=config.engine,
                 engine_options=dict(ray_options or {}), **config.teacher_options())


def fuse_teacher(cache: Path, data: Path, runs: Sequence[Path], out: Path, *, valid_split: str = "valid",
                 scorers: Mapping[str, str] | None = None, queries: Path | None = None,
                 step: float = 0.1) -> FusedWeights:
    """``distill fuse-teacher``: the cached teacher fused with the first stage of ``runs`` (and ``scorers``,
    rankers applied to the cached pairs), weights chosen on ``valid_split``; returns the weights."""
    from distill.core.manifest import frame_hash
    from distill.data.beir import load_beir
    from distill.data.runs import read_run
    from teachers.fusion import fuse_teacher as fuse

    check_output(out, inputs=[cache, *runs, queries], datasets=[data], folder=True)
    valid = load_beir(data, valid_split)
    others, sources = {}, {"bm25": {"kind": "first-stage", "runs": [str(r) for r in runs]}}
    if scorers:
        from distill.cache.store import read_scores
        from distill.rankers.loading import load_ranker

        pairs = read_scores(cache)[0].select("qid", "docid")
        everything = load_beir(data, None)
        if queries is not None:
            import polars as pl

            from distill.data.querysets import read_queries_file

            extra = read_queries_file(queries).join(everything.queries, on="qid", how="anti")
            everything.queries = pl.concat([everything.queries, extra])
        for name, spec in scorers.items():
            ranker = load_ranker(spec, name=name)
            others[name] = ranker.rerank(everything, pairs)
            sources[name] = ranker.get_config_dict()
    return fuse(out, cache, [read_run(r) for r in runs], valid.qrels, others=others, step=step,
                corpus_hash=frame_hash(valid.corpus), sources=sources)


def build_cascade(data: Path, split: str, run: Path, stages: Mapping[str, str], budget_ms: float | BudgetShare,
                  out: Path,
                  config: CascadeBuildConfig | None = None, *, costs: Mapping[str, StageCost] | None = None,
                  cost_from: Mapping[str, str] | None = None) -> CascadeBuild:
    """``distill cascade build``: search every cascade of ``stages`` (the first is the first stage) on
    ``split``'s candidates ``run`` within ``budget_ms`` per query (or a share of one stage's latency),
    print the frontier, write the
    best spec to ``out``."""
    from distill.cascade.search import build_cascade as build
    from distill.data.inputs import load_dataset_and_run

    check_output(out, inputs=[run, *stages.values(), *(cost_from or {}).values()], datasets=[data])
    for name in costs or {}:
        if name not in stages:
            raise ConfigError(f"--cost for unknown stage {name!r}; stages: {list(stages)}", field="--cost")
    dataset, pool = load_dataset_and_run(data, split, run)
    built = build(dataset, pool, stages, budget_ms, config, costs=costs, cost_from=cost_from)
    built.cascade.provenance["run"] = str(run)
    print_search(built.search, built.first_stage_metrics, built.metrics, next(iter(stages)))
    built.cascade.write_spec(out)
    log.info("wrote %s", out)
    return built


def run_cascade(spec: Path, data: Path, run: Path, out: Path, *, split: str = "test", budget_ms: float | None = None,
                no_budget: bool = False, threads: int | None = None) -> dict[str, Any]:
    """``distill cascade run``: rerank query by query through the cascade ``spec``; write the run to ``out``
    and its metrics and latency to ``out.json`` (returned), and print them."""
    from dataclasses import replace

    from distill.cascade.model import Cascade
    from distill.core.io import write_json_atomic
    from distill.core.manifest import library_versions
    from distill.data.inputs import load_dataset_and_run
    from distill.data.runs import write_run
    from distill.evaluation.metrics import metric_means

    if no_budget and budget_ms is not None:
        raise ConfigError("give --budget-ms or --no-budget, not both")
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    cascade = Cascade.read_spec(spec)
    for target in (out, out.with_name(out.name + ".json")):
        check_output(target, inputs=[spec, run, *(s.spec for s in cascade.stages)], datasets=[data])
    if no_budget or budget_ms is not None:
        cascade = replace(cascade, budget_ms=budget_ms)
    dataset, pool = load_dataset_and_run(data, split, run)
    cascade.prepare(dataset)
    ranked = cascade.rerank(dataset, pool, per_query=True)
    write_run(ranked, out, tag="cascade")
    summary = {"cascade": cascade.get_config_dict(), "spec": str(spec), "data": str(data), "split": split,
               "run": str(run), "metrics": metric_means(dataset.qrels, ranked),
               "candidate_metrics": metric_means(dataset.qrels, pool), "latency": cascade.stats.summary(),
               "versions": library_versions()}
    print_cascade_run(str(cascade), cascade.budget_ms, f"{dataset.name}/{split}", summary)
    write_json_atomic(out.with_name(out.name + ".json"), summary)
    return summary


def evaluate(data: Path, run: Path, rankers: Mapping[str, str], out: Path, *, split: str = "test",
             config: EvaluateConfig | None = None, overwrite: bool = False) -> EvaluationResult:
    """``distill evaluate``: rerank ``split``'s candidates ``run`` with every ranker (name → spec); write
    metrics, significance, agreement and the report to ``out`` (``overwrite``: even if it is no earlier
    evaluation) and print the summary."""
    from distill.data.beir import load_beir
    from distill.data.runs import read_run
    from distill.evaluation.runner import EvaluateConfig, check_roles
    from distill.evaluation.runner import evaluate as run_evaluation

    config = config or EvaluateConfig()
    check_folder(out, "evaluation", overwrite=overwrite, inputs=[run, *rankers.values()], datasets=[data])
    check_roles(list(rankers), config.baseline, config.teacher, config.correction)
    result = run_evaluation(load_beir(data, split), read_run(run), dict(rankers), config)
    result.settings.update(data=str(data), run=str(run))
    result.write(out, overwrite=overwrite)
    print_summary(result, out)
    return result


def report(eval_dir: Path, out: Path | None = None, title: str = "distill evaluation", *,
           overwrite: bool = False) -> tuple[Path, Path]:
    """``distill report``: render ``report.html`` and ``report.md`` of a saved evaluation into ``out`` (the
    evaluation's folder by default; another folder must be new, empty or a report, unless ``overwrite``)."""
    from distill.core.manifest import write_manifest
    from distill.evaluation.report import write_report
    from distill.evaluation.runner import EvaluationResult

    target = out or eval_dir
    if target.resolve() != eval_dir.resolve():
        check_folder_output(target, ("report", "pipeline"), overwrite=overwrite)  # files added, none removed
    result = EvaluationResult.load(eval_dir)
    written = write_report(target, result, result.latency, result.configs, result.feature_importance, title=title)
    if target.resolve() != eval_dir.resolve():
        write_manifest(target, "report", {"eval": str(eval_dir), "title": title})
    log.info("wrote %s and %s", *written)
    return written

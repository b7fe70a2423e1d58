"""What each ``distill`` command does, as one public function of files and settings: ``run_<command>``.

A function is named after its command (``distill cascade build`` is :func:`run_cascade_build`), never
after the library function it calls. A command parses its options, calls its function here and prints
what it returns (:mod:`distill.app.summaries`); nothing here prints, a function logs what it wrote.
:mod:`distill.app.pipeline` calls the same functions, and a notebook can too:
``tasks.run_candidates(data, out, split="test", k=100)`` does what ``distill candidates --data DATA
--split test --k 100 --out OUT`` does. The arguments are the command's options (``--max-length`` is
``max_length``, with its default), parsed: a repeatable ``NAME=SPEC`` option is a dict, evaluate,
cascade build and export take their config dataclasses, and the settings of train-teacher,
score-teacher and serve are keyword arguments defaulting to their config dataclasses' fields
(:mod:`teachers.train`, :mod:`teachers.scoring`, :mod:`distill.serve.app`), where the commands'
options come from too. Heavy libraries are imported inside the functions, as in the commands.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill.app.student_tasks import STUDENTS, parse_loss_params, run_select_student, run_train_student, teacher_path  # noqa: F401  (train-student's and select-student's tasks)
from distill.core.errors import ConfigError
from distill.core.outputs import check_folder, check_folder_output, check_output

if TYPE_CHECKING:
    import polars as pl

    from distill.cache.exporting import ExportResult
    from distill.cache.importing import ImportResult
    from distill.cache.score_scale import ScoreScale
    from distill.cache.store import CacheInfo, TeacherCache
    from distill.cache.verify import CacheCheck
    from distill.cascade.model import Cascade, StageCost
    from distill.cascade.search import BudgetShare, CascadeBuild, CascadeBuildConfig
    from distill.evaluation.runner import EvaluateConfig, EvaluationResult
    from students.export import ExportConfig
    from teachers.fusion import FusedWeights
    from teachers.scoring import TeacherScoring

log = logging.getLogger("distill")


def run_split_view(data: Path, out: Path, *, overwrite: bool = False, **settings: Any) -> Path:
    """``distill split-view``: ``data`` with its ``split``'s queries divided into train and valid, at ``out``.

    ``settings`` are :func:`~distill.app.data_view.split_view`'s (``split``, ``valid_fraction``,
    ``title_queries``, ``seed``), its defaults where left out."""
    from distill.app.data_view import split_view

    view = split_view(data, out, overwrite=overwrite, **settings)
    log.info("split view of %s at %s", data, view)
    return view


def run_pseudo_queries(data: Path, out: Path, kind: str = "auto", *, max_queries: int | None = None,
                       seed: int = 42) -> Path:
    """``distill pseudo-queries``: one query per document of ``data`` from its own text, written to ``out``."""
    from distill.data.querysets import pseudo_queries_for, read_queries_file

    check_output(out, datasets=[data])
    path = pseudo_queries_for(data, out, kind, max_queries=max_queries, seed=seed)
    log.info("wrote %d pseudo-queries to %s", read_queries_file(path).height, path)
    return path


def run_candidates(data: Path, out: Path, *, split: str | None = None, queries: Path | None = None, k: int = 100,
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


def run_train_teacher(data: Path, out: Path, *, init: str, split: str = "train", quick: bool = False,
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
    from teachers.train import KIND, TeacherTrainConfig, train_teacher

    check_folder(out, KIND, overwrite=overwrite, inputs=[init], datasets=[data])
    config = TeacherTrainConfig.from_settings(quick=quick, resume=resume, **settings)
    return train_teacher(load_beir(data, split), out, init=init, config=config, overwrite=overwrite)


def run_score_teacher(teacher: str, cache: Path, *, data: Path | None = None, split: str | None = None,
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
    from teachers.scoring import TeacherScoringConfig, score_teacher

    config = TeacherScoringConfig(**settings)
    shard_spec = parse_shard(config.shard)
    if ray_options and config.engine != "ray":
        raise ConfigError(f"--{next(iter(ray_options)).replace('_', '-')} applies to --engine ray only")
    dataset, pool = load_dataset_and_run(data, split if split or queries else "test", run, pairs, queries)
    return score_teacher(teacher, dataset, pool, cache, source=str(run or pairs), shard=shard_spec,
                         flush_pairs=config.flush_pairs, sanity_check=config.sanity_check, engine=config.engine,
                         engine_options=dict(ray_options or {}), **config.teacher_options())


def run_fuse_teacher(cache: Path | Sequence[Path], data: Path, runs: Sequence[Path], out: Path, *,
                     valid_split: str = "valid", scorers: Mapping[str, str] | None = None, queries: Path | None = None,
                     step: float = 0.1) -> FusedWeights:
    """``distill fuse-teacher``: the cached teacher fused with the first stage of ``runs`` (and ``scorers``,
    rankers applied to the cached pairs), weights chosen on ``valid_split``; returns the weights and each
    component's validation value alone. ``cache`` may be several teacher caches, fused as an ensemble
    (:func:`teachers.fusion.teacher_names` names them; ``scorers`` apply to the first one's pairs)."""
    from distill.core.manifest import frame_hash
    from distill.data.beir import load_beir
    from distill.data.runs import read_run
    from teachers.fusion import fuse_teacher

    caches = [cache] if isinstance(cache, (str, Path)) else list(cache)
    check_output(out, inputs=[*caches, *runs, queries], datasets=[data], folder=True)
    valid = load_beir(data, valid_split)
    others, sources = {}, {"bm25": {"kind": "first-stage", "runs": [str(r) for r in runs]}}
    if scorers:
        from distill.cache.store import read_scores
        from distill.rankers.loading import load_ranker

        pairs = read_scores(caches[0])[0].select("qid", "docid")
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
    return fuse_teacher(out, caches, [read_run(r) for r in runs], valid.qrels, others=others, step=step,
                        corpus_hash=frame_hash(valid.corpus), sources=sources)


def run_cascade_build(data: Path, split: str, run: Path, stages: Mapping[str, str],
                      budget_ms: float | BudgetShare, out: Path, config: CascadeBuildConfig | None = None, *,
                      costs: Mapping[str, StageCost] | None = None,
                      cost_from: Mapping[str, str] | None = None) -> CascadeBuild:
    """``distill cascade build``: search every cascade of ``stages`` (the first is the first stage) on
    ``split``'s candidates ``run`` within ``budget_ms`` per query (or a share of one stage's latency) and
    write the best one's spec to ``out``; returns the search (the command prints its frontier:
    :func:`~distill.app.summaries.print_cascade_build`)."""
    from distill.cascade.search import build_cascade
    from distill.data.inputs import load_dataset_and_run

    check_output(out, inputs=[run, *stages.values(), *(cost_from or {}).values()], datasets=[data])
    for name in costs or {}:
        if name not in stages:
            raise ConfigError(f"--cost for unknown stage {name!r}; stages: {list(stages)}", field="--cost")
    dataset, pool = load_dataset_and_run(data, split, run)
    built = build_cascade(dataset, pool, stages, budget_ms, config, costs=costs, cost_from=cost_from)
    built.cascade.provenance["run"] = str(run)
    built.cascade.write_spec(out)
    return built


@dataclass(frozen=True)
class CascadeRun:
    """What ``distill cascade run`` did: the ``cascade`` as run (its budget and statistics), the queries it
    ran on (``where``: ``dataset/split``) and the ``summary`` written to ``<out>.json``."""

    cascade: Cascade
    where: str
    summary: dict[str, Any]


def run_cascade_run(spec: Path, data: Path, run: Path, out: Path, *, split: str = "test",
                    budget_ms: float | None = None, no_budget: bool = False,
                    threads: int | None = None) -> CascadeRun:
    """``distill cascade run``: rerank query by query through the cascade ``spec``; write the run to ``out``
    and its metrics and latency to ``out.json`` (the command prints them:
    :func:`~distill.app.summaries.print_cascade_run`)."""
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
    write_json_atomic(out.with_name(out.name + ".json"), summary)
    return CascadeRun(cascade, f"{dataset.name}/{split}", summary)


def run_evaluate(data: Path, run: Path, rankers: Mapping[str, str], out: Path, *, split: str = "test",
                 config: EvaluateConfig | None = None, overwrite: bool = False) -> EvaluationResult:
    """``distill evaluate``: rerank ``split``'s candidates ``run`` with every ranker (name → spec); write
    metrics, significance, agreement and the report to ``out`` (``overwrite``: even if it is no earlier
    evaluation); the command prints the summary (:func:`~distill.app.summaries.print_evaluation`)."""
    from distill.data.beir import load_beir
    from distill.data.runs import read_run
    from distill.evaluation.runner import EvaluateConfig, check_roles, evaluate

    config = config or EvaluateConfig()
    check_folder(out, "evaluation", overwrite=overwrite, inputs=[run, *rankers.values()], datasets=[data])
    check_roles(list(rankers), config.baseline, config.teacher, config.correction)
    result = evaluate(load_beir(data, split), read_run(run), dict(rankers), config)
    result.settings.update(data=str(data), run=str(run))
    result.write(out, overwrite=overwrite)
    return result


def run_report(eval_dir: Path, out: Path | None = None, title: str = "distill evaluation", *,
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


def run_cache_info(folder: Path) -> tuple[CacheInfo, ScoreScale]:
    """``distill cache info``: a cache's rows, queries, teacher and coverage of each candidate set, and
    the scale of its scores (the command prints them: :func:`~distill.app.summaries.print_cache_info`)."""
    from distill.cache.score_scale import score_scale
    from distill.cache.store import TeacherCache

    store = TeacherCache.open(folder)
    return store.info(), score_scale(store.scores())


def run_cache_merge(out: Path, sources: Sequence[Path]) -> TeacherCache:
    """``distill cache merge``: join caches of one teacher (e.g. the parts scored with ``--shard i/N``)
    into ``out``."""
    from distill.cache.store import merge_caches

    merged = merge_caches(out, list(sources))
    log.info("merged %d cache(s) into %s: %d scores", len(sources), out, merged.scores().height)
    return merged


def run_cache_verify(folder: Path, *, repair: bool = False) -> tuple[CacheCheck, list[str]]:
    """``distill cache verify``: check every shard, candidate file and the manifest of a cache; with ``repair``
    set unreadable files aside, rebuild a lost manifest and remove killed writers' files. Returns the
    check and what was repaired (the command prints both, and fails on a problem)."""
    from distill.cache.verify import verify_cache

    return verify_cache(folder, repair=repair)


def run_cache_import(files: Sequence[Path], data: Path, teacher_name: str, out: Path, *, format: str | None = None,
                     queries: Path | None = None, ranks_only: bool = False) -> ImportResult:
    """``distill cache import``: the scores (or, ``ranks_only``, the rankings) of ``files`` (trec | jsonl | parquet
    | tsv, ``format`` or each file's extension), computed elsewhere on ``data``'s corpus and queries (and those of
    ``queries``), as a teacher cache ``out`` of the teacher ``teacher_name`` (:mod:`distill.cache.importing`)."""
    from distill.cache.importing import import_scores

    check_output(out, inputs=[*files, queries], datasets=[data], folder=True)
    result = import_scores(list(files), data, teacher_name, out, format=format, queries=queries,
                           ranks_only=ranks_only)
    log.info("imported %d scores of %d queries into %s", result.pairs, result.queries, out)
    return result


def run_cache_export(cache: Path, out: Path, *, format: str | None = None) -> ExportResult:
    """``distill cache export``: the scores of the teacher cache ``cache`` as the file ``out`` (trec | parquet,
    ``format`` or ``out``'s extension), which ``distill cache import`` reads back (:mod:`distill.cache.exporting`)."""
    from distill.cache.exporting import export_cache

    check_output(out, inputs=[cache])
    return export_cache(cache, out, format)


def run_export(model: Path, out: Path, config: ExportConfig | None = None, *,
               overwrite: bool = False) -> dict[str, Any]:
    """``distill export``: the student folder ``model`` as an ONNX Runtime or OpenVINO folder ``out``, written
    only if it ranks like the fp32 model; returns the fidelity check."""
    from students.export import export_model

    return export_model(model, out, config, overwrite=overwrite)


def run_serve(spec: Path, *, corpus: Path | None = None, access_log: bool = False, **settings: Any) -> None:
    """``distill serve``: serve the cascade ``spec`` over HTTP until stopped; ``settings`` are the fields of
    :class:`~distill.serve.app.ServeConfig` (host, port, ...), its defaults where left out."""
    from distill.serve.app import ServeConfig, run_server

    run_server(spec, ServeConfig(**settings), corpus=corpus, access_log=access_log)

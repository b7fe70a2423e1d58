"""What each ``distill`` command does, as one public function of files and settings.

A command parses its options and calls its function here; :mod:`distill.app.pipeline` calls the
same functions, and a notebook can too: ``tasks.candidates(data, out, split="test", k=100)``
does what ``distill candidates --data DATA --split test --k 100 --out OUT`` does. The arguments
are the command's options (``--max-length`` is ``max_length``, with its default), parsed: a
repeatable ``NAME=SPEC`` option is a dict, and evaluate and cascade build take their config
dataclasses. Heavy libraries are imported inside the functions, as in the commands.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill.app.summaries import print_cascade_run, print_search, print_summary
from distill.core.errors import ConfigError
from distill.core.outputs import check_folder, check_folder_output, check_output

if TYPE_CHECKING:
    import polars as pl

    from distill.cascade.model import StageCost
    from distill.cascade.search import BudgetShare, CascadeBuild, CascadeBuildConfig
    from distill.evaluation.runner import EvaluateConfig, EvaluationResult
    from students.train import StudentResult
    from teachers.fusion import FusedWeights
    from teachers.scoring import TeacherScoring

log = logging.getLogger("distill")

STUDENTS = ("cross-encoder", "bi-encoder", "lightgbm")
# train-teacher's settings, and those of --quick (a smoke run that finishes in minutes on a laptop CPU)
TEACHER = {"epochs": 2.0, "max_length": 256, "negatives": 7, "negatives_from_top": 30, "valid_k": 30}
QUICK = {"epochs": 1.0, "max_length": 128, "negatives": 3, "negatives_from_top": 10, "valid_k": 10}


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


def train_teacher(data: Path, out: Path, *, init: str, split: str = "train", objective: str = "listnet",
                  epochs: float | None = None, patience: int = 1, lr: float = 5e-5, batch_size: int = 4,
                  max_length: int | None = None, negatives: int | None = None, negatives_from_top: int | None = None,
                  valid_fraction: float = 0.1, valid_k: int | None = None, weak_titles: int = 0, quick: bool = False,
                  seed: int = 42, precision: str = "auto", resume: bool = False,
                  trust_remote_code: bool = False, overwrite: bool = False) -> Path:
    """``distill train-teacher``: fine-tune ``init`` on ``split``'s qrels with BM25 hard negatives.

    A setting left None is :data:`TEACHER`'s, or :data:`QUICK`'s with ``quick``; ``patience=0``
    trains every epoch; ``resume`` continues from the latest checkpoint in ``<out>.checkpoints``;
    ``overwrite`` replaces an ``out`` that is no earlier teacher (see :mod:`distill.core.outputs`).
    """
    from distill.data.beir import load_beir
    from distill.training.trainer import TrainConfig
    from teachers.train import KIND, TeacherTrainConfig
    from teachers.train import train_teacher as train

    check_folder(out, KIND, overwrite=overwrite, inputs=[init], datasets=[data])

    def pick(value, name: str):
        return value if value is not None else (QUICK if quick else TEACHER)[name]

    settings = TrainConfig(epochs=pick(epochs, "epochs"), lr=lr, batch_size=batch_size,
                           max_length=pick(max_length, "max_length"), seed=seed, precision=precision,
                           valid_fraction=valid_fraction, resume_from_checkpoint=True if resume else None)
    config = TeacherTrainConfig(objective=objective, negatives=pick(negatives, "negatives"),
                                negatives_from_top=pick(negatives_from_top, "negatives_from_top"),
                                valid_k=pick(valid_k, "valid_k"), weak_titles=weak_titles, patience=patience or None,
                                trust_remote_code=trust_remote_code, train=settings)
    return train(load_beir(data, split), out, init=init, config=config, overwrite=overwrite)


def score_teacher(teacher: str, cache: Path, *, data: Path | None = None, split: str | None = None,
                  queries: Path | None = None, run: Path | None = None, pairs: Path | None = None,
                  kind: str = "auto", max_length: int | None = None, dtype: str = "auto", backend: str = "auto",
                  device: str | None = None, batch_tokens: int | None = None, shard: str | None = None,
                  flush_pairs: int = 1024,
                  revision: str | None = None, instruction: str | None = None, allow_untrained_head: bool = False,
                  trust_remote_code: bool = False, sanity_check: bool = True, engine: str = "local",
                  ray_options: Mapping[str, Any] | None = None) -> TeacherScoring:
    """``distill score-teacher``: score the candidates (``data`` + ``run``, or ``pairs``) the cache lacks.

    ``split`` defaults to test unless ``queries`` is given; ``ray_options`` (address, num_workers,
    gpus_per_worker) are for ``engine="ray"`` only.
    """
    from distill.cache.scoring import parse_shard
    from distill.data.inputs import load_dataset_and_run
    from teachers.scoring import score_teacher as score

    shard_spec = parse_shard(shard)
    if ray_options and engine != "ray":
        raise ConfigError(f"--{next(iter(ray_options)).replace('_', '-')} applies to --engine ray only")
    dataset, pool = load_dataset_and_run(data, split if split or queries else "test", run, pairs, queries)
    return score(teacher, dataset, pool, cache, source=str(run or pairs), shard=shard_spec, flush_pairs=flush_pairs,
                 sanity_check=sanity_check, kind=kind, dtype=dtype, backend=backend, device=device,
                 revision=revision, trust_remote_code=trust_remote_code, allow_untrained_head=allow_untrained_head,
                 max_tokens_per_batch=batch_tokens, max_length=max_length, instruction=instruction,
                 engine=engine, engine_options=dict(ray_options or {}))


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


def parse_loss_params(items: Sequence[str]) -> dict[str, Any]:
    """``["temperature=2", "margin=0.5"]`` → ``{"temperature": 2, "margin": 0.5}`` (JSON values, else strings)."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--loss-param must look like name=value, got {item!r}", field="loss-param")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
    return params


def teacher_path(manifest: dict[str, Any], cache: Path) -> str:
    """The teacher model recorded in a cache manifest's fingerprint (for --init-from-teacher)."""
    teacher = manifest.get("teacher") or {}
    for key in ("model", "model_name_or_path", "path"):
        if isinstance(teacher.get(key), str):
            return teacher[key]
    raise ConfigError(f"the cache's teacher fingerprint names no model ({teacher}); pass --teacher PATH",
                      path=cache, field="teacher")


def train_student(student: str, cache: Path, data: Path, out: Path, *, split: str | None = None,
                  queries: Path | None = None, loss: str | None = None, loss_params: dict[str, Any] | None = None,
                  teacher_scale: float | str | None = "auto", hard_label_weight: float = 0.0,
                  hard_label_kind: str = "bce", init: str | None = None, init_from_teacher: bool = False,
                  layers: int | None = None, layer_choice: str = "first", teacher: str | None = None,
                  mode: str = "sampled", negatives: int = 7, listwise_k: int = 8, positive_source: str = "qrels",
                  fn_margin: float | None = None, epochs: float = 1.0, rounds: int = 1, lr_schedule: str = "constant",
                  lr: float | None = None, batch_size: int = 8, max_length: int = 256,
                  valid_fraction: float | None = None, valid_split: str | None = None, valid_run: Path | None = None,
                  allow_collapse: bool = False, seed: int = 42, precision: str = "auto", resume: bool = False,
                  checkpoint_steps: int | None = None, similarity: str = "cosine", scale: float = 20.0,
                  learn_scale: bool = False, objective: str = "lambdarank", n_grades: int = 5, num_leaves: int = 31,
                  min_data_in_leaf: int = 20, qrels_weight: float = 0.0, n_estimators: int = 500,
                  early_stopping_rounds: int = 50, feature_rankers: Mapping[str, str] | None = None,
                  trust_remote_code: bool = False, overwrite: bool = False) -> StudentResult:
    """``distill train-student``: distill the scores of the teacher cache ``cache`` into a ``student``
    (cross-encoder | bi-encoder | lightgbm) trained on ``split``'s and ``queries``' queries.

    ``valid_split`` (with its candidates ``valid_run``) validates every round and checks for a
    collapse. ``similarity``, ``scale`` and ``learn_scale`` are the bi-encoder's; ``objective`` to
    ``feature_rankers`` (other rankers' scores as features, name → spec) LightGBM's. ``lr`` and
    ``valid_fraction`` default to 2e-5 and 0 for neural students, 0.05 and 0.2 for LightGBM. ``overwrite``
    replaces an ``out`` that is no earlier student of this kind.
    """
    from students.train import RoundsConfig
    from students.train import train_student as train
    from students.validation import Validation

    if student not in STUDENTS:
        raise ConfigError(f"--student must be one of {', '.join(STUDENTS)}, got {student!r}")
    check_folder(out, f"{student}-student", overwrite=overwrite, datasets=[data],
                 inputs=[cache, queries, valid_run, init, teacher, *(feature_rankers or {}).values()])
    if (feature_rankers or qrels_weight) and student != "lightgbm":
        raise ConfigError("--feature-ranker and --qrels-weight are for the lightgbm student only "
                          "(neural students mix qrels in with --hard-label-weight)")
    scores, manifest, dataset = _training_scores(cache, data, split, queries)
    common = dict(teacher_fingerprint=manifest.get("teacher"), allow_collapse=allow_collapse, scores_source=cache,
                  validation=Validation.load(data, valid_split, valid_run) if valid_split else None,
                  overwrite=overwrite)
    if student == "lightgbm":
        from students.lightgbm import LightGBMConfig

        config = LightGBMConfig(
            objective=objective, n_grades=n_grades, num_leaves=num_leaves, min_data_in_leaf=min_data_in_leaf,
            qrels_weight=qrels_weight, learning_rate=0.05 if lr is None else lr, n_estimators=n_estimators,
            valid_fraction=0.2 if valid_fraction is None else valid_fraction,
            early_stopping_rounds=early_stopping_rounds, seed=seed, feature_rankers=dict(feature_rankers or {}))
        return train("lightgbm", dataset, scores, out, lightgbm=config, rounds=RoundsConfig(rounds), **common)
    from distill.training.groups import GroupConfig
    from distill.training.losses import LOSSES
    from distill.training.trainer import TrainConfig

    if loss is None:
        raise ConfigError(f"a {student} student needs --loss, one of: {', '.join(LOSSES)}")
    _check_init(student, init, init_from_teacher, layers)
    if init_from_teacher:
        init = teacher or teacher_path(manifest, cache)
    groups = GroupConfig(mode=mode, n_negatives=negatives, listwise_k=listwise_k, positive_source=positive_source,
                         false_negative_margin=fn_margin, seed=seed)
    settings = TrainConfig(epochs=epochs, lr=2e-5 if lr is None else lr, batch_size=batch_size, max_length=max_length,
                           seed=seed, precision=precision, valid_fraction=0.0 if valid_fraction is None else
                           valid_fraction, eval_steps=checkpoint_steps, resume_from_checkpoint=True if resume else None)
    return train(student, dataset, scores, out, loss=loss, loss_params=loss_params,
                 hard_label_weight=hard_label_weight, hard_label_kind=hard_label_kind, init=init,
                 teacher_scale=teacher_scale, init_from_teacher_layers=layers if student == "cross-encoder" else None,
                 layer_choice=layer_choice, group_config=groups, train_config=settings,
                 rounds=RoundsConfig(rounds, lr_schedule),
                 bi_encoder={"similarity": similarity, "scale": scale, "learn_scale": learn_scale}
                 if student == "bi-encoder" else None,
                 trust_remote_code=trust_remote_code, **common)


def _training_scores(cache: Path, data: Path, split: str | None,
                     queries: Path | None) -> tuple[pl.DataFrame, dict[str, Any], Any]:
    """The cache's scores of the training queries (``split``'s, else train, and ``queries``') computed from
    their current texts, the manifest and those queries, with a warning when some of their registered pairs
    have no such score (a stopped score-teacher, or texts edited since it ran)."""
    from distill.cache.store import TeacherCache, read_scores
    from distill.data.querysets import load_training_queries

    dataset = load_training_queries(data, split if split or queries else "train", queries)
    scores, manifest = read_scores(cache, dataset=dataset)
    unscored, registered = TeacherCache.open(cache).unscored(dataset.queries["qid"], dataset=dataset)
    if unscored:
        log.warning("%d of the %d candidate pairs registered in %s for these queries have no teacher score "
                    "yet from their current texts (a stopped score-teacher, or texts edited since): training on the "
                    "scored ones only; rerun score-teacher to finish", unscored, registered, cache)
    return scores, manifest, dataset


def _check_init(student: str, init: str | None, init_from_teacher: bool, layers: int | None) -> None:
    """A neural student starts from ``init``, or (a cross-encoder) from ``layers`` of the teacher's."""
    if student == "cross-encoder":
        if init_from_teacher == (init is not None):
            raise ConfigError("a cross-encoder student needs exactly one of --init PATH or "
                              "--init-from-teacher --layers N")
        if init_from_teacher != (layers is not None):
            raise ConfigError("--init-from-teacher and --layers N (the teacher layers to keep) go together")
    elif init is None or init_from_teacher:
        raise ConfigError("a bi-encoder student needs --init (a SentenceTransformer folder or id, e.g. "
                          "all-MiniLM-L6-v2); --init-from-teacher is for cross-encoders")


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

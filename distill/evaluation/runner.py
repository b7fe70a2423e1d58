"""Compare rankers on one candidate run: metrics, paired significance vs a baseline,
agreement with the teacher and, optionally, latency; :func:`evaluate` is the public entry point
(``distill evaluate`` is a thin wrapper around it).

Every ranker reranks the same candidates, so per-query metric values pair up across
rankers. Metrics come from ir-measures (:mod:`distill.evaluation.metrics`), the paired tests
against the baseline from :mod:`distill.evaluation.significance`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from distill.core.errors import ConfigError, InputError
from distill.core.io import atomic_dir, atomic_path, write_json_atomic, write_text_atomic
from distill.core.progress import progress_display
from distill.core.schema import DOCID, QID, SCORE, cut, require_columns
from distill.data.beir import Dataset
from distill.evaluation.agreement import teacher_agreement
from distill.evaluation.calibration import RELEVANCE_SCORE, calibration_tables
from distill.evaluation.depth import DEFAULT_DEPTHS, depth_curve
from distill.evaluation.latency import LatencyResult, load_latency, measure_latency, save_latency
from distill.evaluation.metrics import DEFAULT_METRICS, per_query
from distill.evaluation.significance import (  # noqa: F401  (adjust_p_values, paired_tests: importable here too)
    CORRECTIONS,
    RANKER,
    adjust_p_values,
    paired_tests,
    significance_table,
    wins_losses_ties,
)
from distill.rankers.base import BaseRanker

log = logging.getLogger(__name__)


@dataclass
class EvaluationResult:
    """Everything an evaluation measured; :meth:`save` / :meth:`load` round-trip it.

    - ``summary``: one row per ranker: ``ranker``, each metric's mean, ``n_queries``, and
      ``wins, losses, ties`` vs the baseline on the first metric (null for the baseline);
      with a teacher, the mean agreement (``kendall_tau, overlap@10, pearson, spearman,
      pearson_pooled, spearman_pooled``).
    - ``per_query``: ``ranker, qid, metric, value``.
    - ``significance``: one row per (ranker other than the baseline, metric): ``mean_delta``,
      ``wins, losses, ties``, ``t_statistic, p_ttest, p_wilcoxon`` and the corrected
      ``p_ttest_adj, p_wilcoxon_adj``.
    - ``agreement``: per query agreement with the teacher (``ranker, qid, n, ...``) or None.
    - ``runs``: each ranker's scores of the candidates (``qid, docid, score``).
    - ``depth``: the first metric when each ranker reranks only the candidate run's top k
      (``ranker, depth, value``; see :mod:`distill.evaluation.depth`), or None.
    - ``calibration``: the reliability tables of the rankers that give a relevance score
      (``ranker, bin, lower, upper, documents, predicted, observed``; see
      :mod:`distill.evaluation.calibration`; their ECE is the summary's ``ECE@10``), or None.
    - ``latency``: measurements by label (a ranker, or e.g. ``"bi (no precompute)"``);
      ``configs``: each ranker's ``get_config_dict()``; ``feature_importance``: by ranker
      that has one; ``run_stats``: by ranker that keeps some (a cascade's skipped stages);
      ``settings``: what the evaluation was asked (its manifest's config).
    """

    summary: pl.DataFrame
    per_query: pl.DataFrame
    significance: pl.DataFrame
    agreement: pl.DataFrame | None
    runs: dict[str, pl.DataFrame]
    metrics: tuple[str, ...]
    baseline: str
    teacher: str | None = None
    correction: str = "holm"
    dataset: str = ""
    depth: pl.DataFrame | None = None
    calibration: pl.DataFrame | None = None
    latency: dict[str, LatencyResult] = field(default_factory=dict)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    feature_importance: dict[str, dict[str, float]] = field(default_factory=dict)
    run_stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def rankers(self) -> list[str]:
        return self.summary[RANKER].to_list()

    def write(self, out: str | Path, title: str = "distill evaluation", *, overwrite: bool = False) -> Path:
        """Write everything (:meth:`save`), ``report.html``, ``report.md`` and a manifest into the folder
        ``out``, which appears only once complete (replacing an earlier evaluation, anything with ``overwrite``)."""
        from distill.core.manifest import frame_hash, write_manifest
        from distill.evaluation.report import write_report

        candidates = pl.concat([r.select(QID, DOCID) for r in self.runs.values()]).unique()
        with atomic_dir(out, kind="evaluation", overwrite=overwrite) as tmp:
            self.save(tmp)
            write_report(tmp, self, self.latency, self.configs, self.feature_importance, title=title)
            write_manifest(tmp, "evaluation", self.settings, candidates_hash=frame_hash(candidates.sort(QID, DOCID)),
                           cascade_skipped={n: s.get("skipped", {}) for n, s in self.run_stats.items()})
        return Path(out)

    def save(self, folder: str | Path) -> None:
        """Write Parquet tables, ``evaluation.json``, ``results.md`` and the latency, configs
        and feature importance JSON files into ``folder`` (each atomically)."""
        folder = Path(folder)
        runs = pl.concat([r.select(pl.lit(n).alias(RANKER), QID, DOCID, SCORE) for n, r in self.runs.items()])
        tables = {"summary": self.summary, "per_query": self.per_query, "significance": self.significance,
                  "runs": runs, "agreement": self.agreement, "depth": self.depth, "calibration": self.calibration}
        for stem, frame in tables.items():
            if frame is not None:
                with atomic_path(folder / f"{stem}.parquet") as tmp:
                    frame.write_parquet(tmp)
        write_json_atomic(folder / "evaluation.json", {
            "metrics": list(self.metrics), "baseline": self.baseline, "teacher": self.teacher,
            "correction": self.correction, "dataset": self.dataset,
            "summary": self.summary.to_dicts(), "significance": self.significance.to_dicts(),
        })
        write_text_atomic(folder / "results.md", markdown_table(self.summary) + "\n")
        save_latency(self.latency, folder / "latency.json")
        write_json_atomic(folder / "configs.json", self.configs)
        write_json_atomic(folder / "feature_importance.json", self.feature_importance)
        write_json_atomic(folder / "run_stats.json", self.run_stats)

    @classmethod
    def load(cls, folder: str | Path) -> EvaluationResult:
        """Read what :meth:`save` wrote."""
        folder = Path(folder)
        meta_path = folder / "evaluation.json"
        if not meta_path.is_file():
            raise InputError("not an evaluation folder (no evaluation.json)", path=folder)
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        summary = pl.read_parquet(folder / "summary.parquet")
        runs = pl.read_parquet(folder / "runs.parquet")
        agreement, depth, calibration = (folder / f"{stem}.parquet" for stem in ("agreement", "depth", "calibration"))
        return cls(
            summary=summary,
            per_query=pl.read_parquet(folder / "per_query.parquet"),
            significance=pl.read_parquet(folder / "significance.parquet"),
            agreement=pl.read_parquet(agreement) if agreement.is_file() else None,
            runs={name: runs.filter(pl.col(RANKER) == name).drop(RANKER) for name in summary[RANKER]},
            metrics=tuple(meta["metrics"]), baseline=meta["baseline"], teacher=meta["teacher"],
            correction=meta["correction"], dataset=meta.get("dataset", ""),
            depth=pl.read_parquet(depth) if depth.is_file() else None,  # older evaluations have none
            calibration=pl.read_parquet(calibration) if calibration.is_file() else None,
            latency=load_latency(folder / "latency.json"), configs=_read_json(folder / "configs.json"),
            feature_importance=_read_json(folder / "feature_importance.json"),
            run_stats=_read_json(folder / "run_stats.json"),
        )


def _read_json(path: Path) -> dict:
    """A JSON object written by :meth:`EvaluationResult.save`; {} when the file is absent."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def markdown_table(frame: pl.DataFrame, decimals: int = 4) -> str:
    """A DataFrame as a GitHub Markdown table (polars' own formatter)."""
    with pl.Config(tbl_formatting="MARKDOWN", tbl_hide_column_data_types=True, tbl_hide_dataframe_shape=True,
                   tbl_rows=-1, tbl_cols=-1, tbl_width_chars=10_000, fmt_str_lengths=200,
                   float_precision=decimals):
        return str(frame)


@dataclass
class EvaluateConfig:
    """What :func:`evaluate` measures; ``distill evaluate``'s option defaults come from here.

    ``k``: candidates per query reranked (the run's top k). ``depths``: rerank depths of the
    first metric's curve. ``latency``: also time each ranker on ``latency_queries`` queries
    with ``threads`` torch threads.
    """

    baseline: str = "bm25"
    teacher: str | None = None
    metrics: tuple[str, ...] = DEFAULT_METRICS
    k: int = 100
    correction: str = "holm"
    depths: tuple[int, ...] = DEFAULT_DEPTHS
    latency: bool = False
    latency_queries: int = 50
    threads: int = 1

    def __post_init__(self) -> None:
        self.metrics = canonical_metrics(self.metrics)
        self.depths = tuple(self.depths)
        for name in ("k", "latency_queries", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"must be an integer >= 1, got {value!r}", field=name)
        if self.correction not in CORRECTIONS:
            raise ConfigError(f"unknown correction {self.correction!r}; known: {list(CORRECTIONS)}",
                              field="correction")


def evaluate(dataset: Dataset, run: pl.DataFrame, rankers: Mapping[str, BaseRanker | str],
             config: EvaluateConfig | None = None, *, show_progress: bool = True) -> EvaluationResult:
    """Rerank the top ``config.k`` candidates of ``run`` per query of ``dataset`` with every
    ranker and compare them: metrics, paired significance against ``config.baseline``,
    agreement with ``config.teacher``, the rerank-depth curve and, with ``config.latency``,
    each ranker's latency. A ranker is an object or a spec for :func:`distill.rankers.loading.load_ranker`
    (``"bm25"``, a run file, a teacher cache, a model folder, a cascade spec).

    Write the result with :meth:`EvaluationResult.write` (tables, report.html, manifest).
    """
    from distill.rankers.loading import load_ranker

    config = config or EvaluateConfig()
    check_roles(list(rankers), config.baseline, config.teacher, config.correction)
    candidates = cut(run, config.k)
    specs = {name: r for name, r in rankers.items() if isinstance(r, str)}
    with progress_display(show_progress) as progress:
        task = progress.add_task("loading rankers", total=len(rankers))
        loaded: dict[str, BaseRanker] = {}
        for name, ranker in rankers.items():
            progress.update(task, description=f"loading {name}")
            loaded[name] = load_ranker(ranker, name=name) if isinstance(ranker, str) else ranker
            progress.advance(task)
        task = progress.add_task("reranking", total=len(loaded))

        def on_ranker(name: str) -> None:
            progress.update(task, description=f"reranking with {name}", completed=list(loaded).index(name))

        result = evaluate_rankers(dataset, candidates, loaded, config.baseline, config.metrics, config.teacher,
                                  config.correction, on_ranker=on_ranker, depths=config.depths)
        progress.update(task, completed=len(loaded))
        result.run_stats = _run_stats(loaded)
        if config.latency:
            result.latency = _measure(loaded, specs, dataset, candidates, config, progress)
    result.configs = {name: r.get_config_dict() for name, r in loaded.items()}
    result.feature_importance = {name: imp for name, r in loaded.items() if (imp := r.feature_importance())}
    result.settings = {**asdict(config), "rankers": {n: specs.get(n, type(r).__name__) for n, r in loaded.items()},
                       "data": str(dataset.path) if dataset.path else dataset.name, "split": dataset.split}
    return result


def _measure(rankers: Mapping[str, BaseRanker], specs: Mapping[str, str], dataset: Dataset,
             candidates: pl.DataFrame, config: EvaluateConfig, progress) -> dict[str, LatencyResult]:
    """Time every ranker with its ``prepare`` step: a teacher cache by the teacher model it
    replays, and a ranker that precomputes (a bi-encoder's corpus embeddings) once more without.
    Stored scores of no model (a run file, a fused teacher's cache) are not timed: replaying
    them costs nothing, and a near-zero latency would put them on the report's Pareto frontier."""
    from distill.cache.store import CachedRanker
    from distill.rankers.loading import model_folder

    timings = {}
    task = progress.add_task("timing", total=len(rankers))
    for name, ranker in rankers.items():
        progress.update(task, description=f"timing {name}")
        folder = model_folder(specs[name]) if name in specs else None
        live = ranker.live()
        if live is None:
            log.info("%s replays stored scores of no model: not timed", name)
            progress.advance(task)
            continue
        if isinstance(ranker, CachedRanker):  # replaying a cache costs nothing: time its teacher
            folder = Path(ranker.cache.manifest["teacher"]["model"])
        timings[name] = measure_latency(live, dataset, candidates, k=config.k, n_queries=config.latency_queries,
                                        prepare=True, threads=config.threads, model_path=folder, name=name)
        cold = live.without_precomputation()
        if cold is not None:
            timings[f"{name} (no precompute)"] = measure_latency(
                cold, dataset, candidates, k=config.k, n_queries=config.latency_queries, prepare=False,
                threads=config.threads, model_path=folder, name=name)
        progress.advance(task)
    return timings


def _run_stats(rankers: Mapping[str, BaseRanker]) -> dict[str, dict[str, Any]]:
    """Each ranker's :meth:`~distill.rankers.base.BaseRanker.run_stats`, with a warning for a cascade
    that skipped stages to stay within its budget: its metrics are then those of a shorter
    cascade on those queries."""
    stats = {name: r.run_stats() for name, r in rankers.items()}
    stats = {name: s for name, s in stats.items() if s}
    for name, s in stats.items():
        if any(s.get("skipped", {}).values()):
            log.warning("cascade %r skipped stages to stay within its budget (queries per stage: %s); its "
                        "metrics are those of the shorter cascade on those queries", name, s["skipped"])
    return stats


def rerank_all(dataset: Dataset, run: pl.DataFrame, rankers: Mapping[str, BaseRanker],
               on_ranker: Callable[[str], None] | None = None) -> dict[str, pl.DataFrame]:
    """Each ranker's scores for the candidates of ``run`` (``on_ranker(name)`` is called before each).

    A ranker's one-off ``prepare(dataset)`` (a bi-encoder's corpus embeddings) runs first, as
    it would in production: a cascade with a budget would otherwise spend it embedding
    documents per query and skip its later stages.
    """
    runs = {}
    for name, ranker in rankers.items():
        if on_ranker is not None:
            on_ranker(name)
        ranker.prepare(dataset)
        scored = ranker.rerank(dataset, run)
        require_columns(scored, [QID, DOCID, SCORE], f"scores of ranker {name!r}")
        if scored.height != run.height:  # a dropped candidate would silently count as not retrieved
            raise InputError(f"ranker {name!r} returned {scored.height} scores for {run.height} candidates")
        relevance = [RELEVANCE_SCORE] if RELEVANCE_SCORE in scored.columns else []  # a calibrated cascade's
        runs[name] = scored.select(QID, DOCID, pl.col(SCORE).cast(pl.Float64), *relevance)
    return runs


def evaluate_rankers(dataset: Dataset, run: pl.DataFrame, rankers: Mapping[str, BaseRanker], baseline: str,
                     metrics: tuple[str, ...] = DEFAULT_METRICS, teacher: str | None = None,
                     correction: str = "holm", on_ranker: Callable[[str], None] | None = None,
                     depths: tuple[int, ...] = DEFAULT_DEPTHS) -> EvaluationResult:
    """Rerank the candidates of ``run`` (restricted to the dataset's queries) with every ranker
    and compare them; see :func:`evaluate_runs`. With scores in ``run``, its order is the first
    stage of the rerank-depth curve."""
    check_roles(list(rankers), baseline, teacher, correction)
    require_columns(run, [QID, DOCID], "candidate run")
    run = run.join(dataset.queries.select(QID), on=QID, how="semi")
    if run.height == 0:
        raise InputError(f"the candidate run has no query of {dataset.name}/{dataset.split}")
    runs = rerank_all(dataset, run, rankers, on_ranker)
    label = dataset.name if dataset.split is None else f"{dataset.name}/{dataset.split}"
    return evaluate_runs(dataset.qrels, runs, baseline, metrics, teacher, correction, dataset=label,
                         first_stage=run if SCORE in run.columns else None, depths=depths)


def evaluate_runs(qrels: pl.DataFrame, runs: dict[str, pl.DataFrame], baseline: str,
                  metrics: tuple[str, ...] = DEFAULT_METRICS, teacher: str | None = None,
                  correction: str = "holm", dataset: str = "", first_stage: pl.DataFrame | None = None,
                  depths: tuple[int, ...] = DEFAULT_DEPTHS) -> EvaluationResult:
    """Metrics of every run over the queries of ``qrels``, paired tests of each run against
    ``baseline``, with ``teacher`` each run's agreement with the teacher's run, with a
    ``first_stage`` run (the candidates' own order) the first metric at each rerank depth, and the
    calibration of each run that has a ``relevance_score`` column."""
    check_roles(list(runs), baseline, teacher, correction)
    metrics = canonical_metrics(metrics)
    values = pl.concat([
        per_query(qrels, r, metrics).select(pl.lit(name).alias(RANKER), QID, "metric", "value")
        for name, r in runs.items()
    ])
    significance = significance_table(values, list(runs), baseline, metrics, correction)
    means = values.group_by(RANKER, "metric").agg(pl.col("value").mean()).pivot(
        "metric", index=RANKER, values="value")
    summary = (
        pl.DataFrame({RANKER: list(runs)})
        .join(means.select(RANKER, *metrics), on=RANKER, how="left", maintain_order="left")
        .with_columns(pl.lit(qrels[QID].n_unique()).cast(pl.Int32).alias("n_queries"))
        .join(wins_losses_ties(significance, metrics[0]), on=RANKER, how="left", maintain_order="left")
    )
    agreement = None
    if teacher is not None:
        agreement, agreement_means = _agreement(runs, teacher)
        summary = summary.join(agreement_means, on=RANKER, how="left", maintain_order="left")
    calibrated = calibration_tables(qrels, runs)
    if calibrated is not None:
        summary = summary.join(calibrated[0], on=RANKER, how="left", maintain_order="left")
    depth = None if first_stage is None else depth_curve(qrels, runs, first_stage, metrics[0], depths)
    return EvaluationResult(summary=summary, per_query=values, significance=significance, agreement=agreement,
                            runs=runs, metrics=metrics, baseline=baseline, teacher=teacher,
                            correction=correction, dataset=dataset, depth=depth,
                            calibration=None if calibrated is None else calibrated[1])


def check_roles(names: list[str], baseline: str, teacher: str | None, correction: str) -> None:
    """Raise :class:`ConfigError` unless baseline and teacher are among ``names`` and the
    correction is known."""
    for role, name in (("baseline", baseline), ("teacher", teacher)):
        if name is not None and name not in names:
            raise ConfigError(f"{role} {name!r} is not one of the rankers {names}", field=f"--{role}")
    if correction not in CORRECTIONS:
        raise ConfigError(f"unknown correction {correction!r}; known: {list(CORRECTIONS)}",
                          field="--correction")


def canonical_metrics(metrics: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Metric names as ir-measures prints them, which is how :func:`distill.evaluation.metrics.per_query`
    labels its rows; a name ir-measures cannot parse is a :class:`ConfigError`."""
    import ir_measures

    names = []
    for metric in metrics:
        try:
            names.append(str(ir_measures.parse_measure(metric)))
        except (ValueError, NameError, SyntaxError, TypeError) as err:
            raise ConfigError(f"unknown metric {metric!r} ({err})", field="--metrics") from None
    if not names:
        raise ConfigError("no metrics", field="--metrics")
    return tuple(names)


def _agreement(runs: dict[str, pl.DataFrame], teacher: str) -> tuple[pl.DataFrame | None, pl.DataFrame]:
    per_query_frames, mean_rows = [], []
    for name, r in runs.items():
        if name == teacher:
            continue
        result = teacher_agreement(r, runs[teacher])
        per_query_frames.append(result.per_query.select(pl.lit(name).alias(RANKER), pl.all()))
        mean_rows.append({RANKER: name, **result.means})
    if not mean_rows:
        return None, pl.DataFrame(schema={RANKER: pl.String})
    return pl.concat(per_query_frames), pl.DataFrame(mean_rows)

"""Build a cascade within a latency budget: load the candidate stages, measure what each costs
per query, let each score the validation candidates once, search the cascades those scores
simulate (:mod:`distill.cascade.simulation`), replay the chosen one for its validation metrics and
calibrate each of its stages' scores to probabilities of relevance (:mod:`distill.cascade.relevance`).

The simulation's names (:func:`search_cascades`, :class:`SearchResult`, :func:`quick_evaluate`,
...) are importable from here too, as before it had its own module.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from distill.cascade.model import Cascade
from distill.cascade.relevance import fit_stage_calibrations
from distill.cascade.simulation import (  # noqa: F401  (the simulation's names: importable here too)
    DEFAULT_CUTOFFS,
    SUPPORTED_METRICS,
    CascadeConfig,
    SearchResult,
    check_cutoff_grid,
    parse_metric,
    quick_evaluate,
    replay,
    search_cascades,
)
from distill.cascade.stages import Stage, StageCost, stage
from distill.core.errors import ConfigError
from distill.core.schema import DOCID, QID, SCORE, cut
from distill.data.beir import Dataset
from distill.data.views import holdout, restrict
from distill.evaluation.calibration import CALIBRATION_DEPTH, METHODS, PLATT
from distill.inference.lengths import pair_weights, passage_config, token_cap
from distill.rankers.base import BaseRanker

log = logging.getLogger(__name__)


@dataclass
class CascadeBuildConfig:
    """How :func:`build_cascade` searches; ``distill cascade build``'s option defaults come from here.

    ``valid_fraction``: share of the dataset's queries searched on (a :func:`distill.data.views.holdout`
    sample with ``seed``; 1.0: all). ``metric``: nDCG@k or RR@k, maximised. ``cutoffs``: the grid
    between stages. ``max_stages``: the longest cascade searched. Stage costs not given are
    measured with ``latency_queries`` queries at ``latency_k // 10`` and ``latency_k`` candidates,
    with ``threads`` torch threads (None: torch's default). ``calibration``: how each stage's scores
    become probabilities of relevance (``platt`` or ``isotonic``), fitted on each stage's top
    ``calibration_depth`` validation documents per query (None: all it ranks).
    """

    valid_fraction: float = 1.0
    seed: int = 0
    metric: str = "nDCG@10"
    cutoffs: tuple[int, ...] = DEFAULT_CUTOFFS
    max_stages: int | None = None
    latency_queries: int = 20
    latency_k: int = 100
    threads: int | None = None
    calibration: str = PLATT
    calibration_depth: int | None = CALIBRATION_DEPTH

    def __post_init__(self) -> None:
        if not 0.0 < self.valid_fraction <= 1.0:
            raise ConfigError(f"must be in (0, 1], got {self.valid_fraction}", field="valid_fraction")
        parse_metric(self.metric)
        check_cutoff_grid(self.cutoffs)
        self.cutoffs = tuple(self.cutoffs)
        if self.calibration not in METHODS:
            raise ConfigError(f"unknown calibration {self.calibration!r}; known: {list(METHODS)}",
                              field="calibration")
        for name, least in (("max_stages", 1), ("latency_queries", 1), ("latency_k", 2), ("threads", 1),
                            ("calibration_depth", 1)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise ConfigError(f"must be an integer >= {least}, got {value!r}", field=name)


@dataclass
class CascadeBuild:
    """What :func:`build_cascade` found: the ``cascade`` (budget, costs and provenance set; write
    it with ``cascade.write_spec(path)``), the ``search`` (frontier, chosen point), and the
    validation metrics (ir-measures) of the first stage alone and of the chosen cascade."""

    cascade: Cascade
    search: SearchResult
    first_stage_metrics: dict[str, float]
    metrics: dict[str, float]
    costs: dict[str, StageCost] = field(default_factory=dict)


@dataclass(frozen=True)
class BudgetShare:
    """A cascade budget given as a share of one stage's expected latency per query at
    ``latency_k`` candidates: "within 10% of the teacher's latency" is ``BudgetShare("teacher", 0.1)``.
    The stage's cost is measured (or given) once, for the search and for the budget alike."""

    stage: str
    share: float

    def __post_init__(self) -> None:
        if isinstance(self.share, bool) or not isinstance(self.share, (int, float)) or not 0 < self.share <= 1:
            raise ConfigError(f"a budget share must be in (0, 1], got {self.share!r}", field="budget_share")

    def resolve(self, costs: Mapping[str, StageCost], pairs: float) -> float:
        """The budget in ms: the share of the stage's expected latency for ``pairs`` candidates."""
        return self.share * costs[self.stage].expected_ms(pairs)


def build_cascade(dataset: Dataset, run: pl.DataFrame, stages: Mapping[str, BaseRanker | str],
                  budget_ms: float | BudgetShare, config: CascadeBuildConfig | None = None, *,
                  costs: Mapping[str, StageCost] | None = None,
                  cost_from: Mapping[str, BaseRanker | str] | None = None) -> CascadeBuild:
    """Choose the best cascade within ``budget_ms`` expected ms per query (or a :class:`BudgetShare`
    of one stage's latency) on ``dataset``'s (validation) queries and their candidates ``run``.

    ``stages``: rankers or :func:`distill.rankers.loading.load_ranker` specs by name, the first being
    the first stage (``"bm25"``: the run's own order); the search picks subsets, orders and
    cutoffs of the others. ``costs``: given stage costs; the others are measured on the stage
    itself, or on ``cost_from[name]`` (e.g. the teacher model behind a teacher cache, whose
    replay costs nothing). Every stage scores the candidates once; cascades are simulated. The
    chosen cascade's stages are calibrated on the validation queries' qrels (``config.calibration``).
    """
    from distill.core.manifest import library_versions
    from distill.evaluation.metrics import DEFAULT_METRICS, metric_means

    config = config or CascadeBuildConfig()
    if not stages:
        raise ConfigError("no stages", field="stages")
    _check_budget(budget_ms, stages)  # before any stage is loaded or scored
    dataset, run = _validation_part(dataset, run, config.valid_fraction, config.seed)
    loaded = _load_stages(stages)
    proxies = _load_stages(cost_from or {}, known=loaded)
    for s in [*loaded.values(), *proxies.values()]:
        s.ranker.prepare(dataset)  # one-off work (corpus embeddings) stays out of latency and scoring
    costs, cost_source = _stage_costs(loaded, proxies, costs or {}, dataset, run, config)
    share = budget_ms if isinstance(budget_ms, BudgetShare) else None
    if share is not None:
        pairs = float(run.group_by(QID).len()["len"].clip(upper_bound=config.latency_k).mean())
        budget_ms = share.resolve(costs, pairs)
        log.info("budget: %.0f%% of stage %s's expected latency = %.3f ms per query", 100 * share.share,
                 share.stage, budget_ms)
    scores = {name: _score(s, dataset, run) for name, s in loaded.items()}
    first = next(iter(loaded))
    result = search_cascades(scores, costs, dataset.qrels, first, budget_ms, config.cutoffs, config.metric,
                             config.max_stages)
    names = tuple(dict.fromkeys([config.metric, *DEFAULT_METRICS]))
    baseline = metric_means(dataset.qrels, scores[first], names)
    chosen = metric_means(dataset.qrels, replay(result.chosen, scores, dataset), names)
    calibrated, calibration = fit_stage_calibrations(result.chosen.to_cascade(loaded).stages, scores, dataset.qrels,
                                                     config.calibration, config.calibration_depth)
    provenance = {
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "data": str(dataset.path or dataset.name),
        "split": dataset.split, "queries": dataset.queries.height, **asdict(config),
        "n_evaluated": result.n_evaluated, "budget_share": asdict(share) if share else None,
        "chosen": {"cascade": str(result.chosen), "value": result.chosen.value,
                   "expected_latency_ms": result.chosen.latency_ms},
        "validation": chosen, "first_stage_validation": baseline, "calibration": calibration,
        "frontier": result.frontier.select("cascade", config.metric, "latency_ms").to_dicts(),
        "candidate_stages": {n: {"spec": s.spec, "cost": asdict(costs[n]), "cost_source": cost_source[n]}
                             for n, s in loaded.items()},
        "versions": library_versions(),
    }
    cascade = Cascade(calibrated, budget_ms, {name: costs[name] for name in result.chosen.stages}, provenance)
    return CascadeBuild(cascade, result, baseline, chosen, costs)


def _check_budget(budget: float | BudgetShare, stages: Mapping[str, Any]) -> None:
    if isinstance(budget, BudgetShare):
        if budget.stage not in stages:
            raise ConfigError(f"the budget's stage {budget.stage!r} is not one of the stages {list(stages)}",
                              field="budget_share")
    elif not math.isfinite(budget) or budget <= 0:
        raise ConfigError(f"the budget must be > 0 ms, got {budget}", field="budget_ms")


def _validation_part(dataset: Dataset, run: pl.DataFrame, fraction: float, seed: int) -> tuple[Dataset, pl.DataFrame]:
    """The queries searched on: a :func:`~distill.data.views.holdout` sample of ``fraction`` of them
    (all at 1.0)."""
    if fraction >= 1:
        return dataset, run
    held = holdout(dataset.queries[QID], fraction, seed)
    return restrict(dataset, held), run.filter(pl.col(QID).is_in(sorted(held)))


def _load_stages(stages: Mapping[str, BaseRanker | str], known: Mapping[str, Stage] | None = None) -> dict[str, Stage]:
    """Rankers or specs by name -> stages, in order; specs naming files become absolute so a
    written cascade spec works from any folder. With ``known``, names must be among its stages."""
    from distill.rankers.loading import load_ranker

    loaded: dict[str, Stage] = {}
    for name, ranker in stages.items():
        if known is not None and name not in known:
            raise ConfigError(f"unknown stage {name!r}; stages: {list(known)}", field="cost_from")
        spec = None
        if isinstance(ranker, str):
            spec = str(Path(ranker).resolve()) if Path(ranker).exists() else ranker
            ranker = load_ranker(spec, name=name)
        loaded[name] = stage(name, ranker, spec)
    return loaded


def _stage_costs(loaded: Mapping[str, Stage], proxies: Mapping[str, Stage], given: Mapping[str, StageCost],
                 dataset: Dataset, run: pl.DataFrame,
                 config: CascadeBuildConfig) -> tuple[dict[str, StageCost], dict[str, str]]:
    """Every stage's cost and where it came from: ``given``, else measured on its proxy (or itself)."""
    costs = dict(given)
    unknown = sorted(set(costs) - set(loaded))
    if unknown:
        raise ConfigError(f"cost for unknown stage(s) {unknown}; stages: {list(loaded)}", field="costs")
    cost_source = {name: "given" for name in costs}
    for name, s in loaded.items():
        if name not in costs:
            costs[name], cost_source[name] = _measure_cost(proxies.get(name, s), dataset, run, config)
    return costs, cost_source


def _measure_cost(s: Stage, dataset: Dataset, candidates: pl.DataFrame,
                  config: CascadeBuildConfig) -> tuple[StageCost, str]:
    """Measure a stage's cost with :func:`distill.evaluation.latency.measure_latency` at ``latency_k // 10``
    and ``latency_k`` candidates per query and fit fixed + per-pair parts; also say where it
    came from. Stored scores cost nothing to replay: a teacher cache is timed on the model its
    fingerprint names (as ``distill evaluate --latency`` does), a run file's cost must be given."""
    from distill.evaluation.latency import measure_latency
    from distill.rankers.loading import RunRanker

    if isinstance(s.ranker, RunRanker) and s.ranker.scores is None:
        log.info("stage %s is the candidates' own order: cost 0 (give --cost %s=0+MS for the retrieval)",
                 s.name, s.name)
        return StageCost(), "candidate order: 0 unless given"
    ranker = s.ranker.live()
    if ranker is None:
        raise ConfigError(f"stage {s.name!r} replays stored scores, so its real cost is unknown: give "
                          f"--cost {s.name}=MS_PER_PAIR or --cost-from {s.name}=MODEL", field="--cost")
    where = s.spec or s.name
    if ranker is not s.ranker:  # a teacher cache: its model, loaded now
        ranker.prepare(dataset)
        where = f"the model behind {where}"
    measured = []
    for size in sorted({max(1, config.latency_k // 10), config.latency_k}):
        latency = measure_latency(ranker, dataset, candidates, k=size, n_queries=config.latency_queries,
                                  prepare=False, threads=config.threads)
        measured.append((_reference_pairs(ranker, dataset, candidates, size), latency.mean_ms))
    cost = StageCost.fit(measured)
    log.info("stage %s: %.3f ms per query + %.4f ms per pair (measured)", s.name, cost.per_query_ms, cost.per_pair_ms)
    points = ", ".join(f"{pairs:.1f} pairs: {ms:.3f} ms" for pairs, ms in measured)
    return cost, f"measured on {where} ({points})"


def _reference_pairs(ranker: Any, dataset: Dataset, candidates: pl.DataFrame, size: int) -> float:
    """The mean pairs per query of the top ``size`` candidates in the ranker's reference pairs
    (:func:`distill.inference.lengths.pair_weights`: its truncation, its passages), the unit the runtime
    plans a request in, so a cost measured on long documents or on passages is not counted twice."""
    top = cut(candidates.join(dataset.queries.select(QID), on=QID, how="semi"), size)
    chars = (pl.Series([len(t) for t in dataset.doc_texts(top[DOCID])], dtype=pl.Float64)
             + pl.Series([len(t) for t in dataset.query_texts(top[QID])], dtype=pl.Float64))
    weights = pair_weights(chars.to_numpy(), token_cap(ranker), passage_config(ranker))
    return float(top.select(QID).with_columns(w=pl.Series(weights)).group_by(QID).agg(pl.col("w").sum())["w"].mean())


def _score(s: Stage, dataset: Dataset, candidates: pl.DataFrame) -> pl.DataFrame:
    """A stage's scores on all candidates, computed once for the whole search."""
    start = time.perf_counter()
    scores = s.ranker.rerank(dataset, candidates).select(QID, DOCID, SCORE)
    log.info("stage %s scored %d candidates in %.1f s", s.name, scores.height, time.perf_counter() - start)
    return scores

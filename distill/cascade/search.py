"""Find the best cascade under a latency budget from stage scores computed once.

Every candidate stage scores all validation candidates once (outside this module); a
cascade is then simulated from those scores without any model call. Enumerated: every
subset of the other stages in every order (permutations), after the first stage, with
non-increasing cutoffs from a grid between consecutive stages; the last stage has no
cutoff (under the final-ranking rule of :mod:`distill.cascade.model` a last cut changes no
order). Each cascade gets an expected latency per query (the sum over its stages of
``per_query_ms + per_pair_ms * mean pairs scored``) and a metric value.

Simulation works on padded ``[queries, candidates]`` numpy matrices: a cascade's ranking
is an index matrix whose head is re-sorted by each next stage, and a child cascade starts
from its parent's matrix (depth-first), so shared prefixes are sorted once. Only the head
``max(cutoff, k)`` columns are carried: the top ``k`` of the final ranking never reaches
further. The metric is our own vectorised nDCG@k / RR@k over those matrices (ir-measures
would take seconds per cascade over thousands of cascades); tests check it against
:func:`distill.evaluation.metrics.evaluate`. Ties between scores are broken by docid, as
:func:`distill.core.schema.with_ranks` does in :class:`~distill.cascade.model.Cascade`.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from distill.cascade.model import Cascade, Stage, StageCost, describe
from distill.core.errors import ConfigError, InputError
from distill.core.schema import DOCID, QID, RELEVANCE, SCORE, require_columns
from distill.data.beir import Dataset
from distill.rankers.base import BaseRanker

log = logging.getLogger(__name__)

DEFAULT_CUTOFFS = (1000, 500, 200, 100, 50, 20, 10)
_METRIC = re.compile(r"^(nDCG|RR)@(\d+)$")
SUPPORTED_METRICS = ("nDCG@k", "RR@k")


@dataclass(frozen=True)
class CascadeConfig:
    """One simulated cascade: stage names, cutoffs (the last None), metric value, latency."""

    stages: tuple[str, ...]
    cutoffs: tuple[int | None, ...]
    value: float
    latency_ms: float

    def __str__(self) -> str:
        return describe(self.stages, self.cutoffs)

    def to_cascade(self, stages: Mapping[str, Stage]) -> Cascade:
        """The cascade of these stages (taken from ``stages`` by name) with these cutoffs."""
        return Cascade(tuple(Stage(stages[n].name, stages[n].ranker, c, stages[n].spec)
                             for n, c in zip(self.stages, self.cutoffs)))


@dataclass
class SearchResult:
    """The cascade chosen within the budget, the Pareto frontier of all cascades evaluated
    (``cascade, stages, cutoffs, <metric>, latency_ms, within_budget``; by latency), and
    how many cascades were evaluated."""

    chosen: CascadeConfig
    frontier: pl.DataFrame
    n_evaluated: int
    metric: str
    budget_ms: float


def parse_metric(metric: str) -> tuple[str, int]:
    """``nDCG@10`` -> ``("nDCG", 10)``; only the metrics the fast simulation implements."""
    match = _METRIC.match(metric)
    if not match or int(match.group(2)) < 1:
        raise ConfigError(f"unsupported search metric {metric!r}; supported: {', '.join(SUPPORTED_METRICS)}",
                          field="metric")
    return match.group(1), int(match.group(2))


def _gather(matrix: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``matrix[q, index[q, i]]`` for every row ``q``: np.take_along_axis on flat offsets,
    several times faster in the search's inner loop."""
    offsets = (np.arange(matrix.shape[0], dtype=index.dtype) * matrix.shape[1])[:, None]
    return np.take(matrix.ravel(), index + offsets)


class _Ranking:
    """A stage's full ranking (``order``) and its inverse (``position`` of each candidate),
    so re-sorting any subset by the stage is one integer sort: no ties, no scores."""

    def __init__(self, order: np.ndarray) -> None:
        self.order = order
        self.position = np.empty_like(order)
        np.put_along_axis(self.position, order, np.broadcast_to(np.arange(order.shape[1]), order.shape), axis=1)

    def resort(self, head: np.ndarray) -> np.ndarray:
        """The candidates of ``head`` (an index matrix), in this stage's order."""
        return _gather(self.order, np.sort(_gather(self.position, head), axis=1))


class _Matrices:
    """Candidates as padded ``[query, candidate]`` matrices.

    Candidates of a query are sorted by docid (column = candidate index), padded with
    ``-inf`` scores and zero gains; ``n`` holds the real count per query.
    """

    def __init__(self, candidates: pl.DataFrame, qrels: pl.DataFrame, metric: str) -> None:
        require_columns(candidates, [QID, DOCID], "candidates")
        require_columns(qrels, [QID, DOCID, RELEVANCE], "qrels")
        self.kind, self.k = parse_metric(metric)
        if candidates.select(QID, DOCID).is_duplicated().any():
            raise InputError("duplicate (qid, docid) among the candidates")
        queries = candidates.select(QID).unique().sort(QID).with_row_index("q")
        self.pairs = (
            candidates.select(QID, DOCID).sort(QID, DOCID)
            .join(queries, on=QID, how="left", maintain_order="left")
            .with_columns(pl.int_range(pl.len()).over(QID).alias("j"))
        )
        self.rows = self.pairs["q"].to_numpy().astype(np.int64)
        self.cols = self.pairs["j"].to_numpy().astype(np.int64)
        self.n = np.bincount(self.rows, minlength=queries.height)
        self.shape = (queries.height, int(self.n.max()))
        gains = self.pairs.join(qrels.select(QID, DOCID, RELEVANCE), on=[QID, DOCID], how="left",
                                maintain_order="left")[RELEVANCE].fill_null(0).clip(lower_bound=0)
        self.gains = self._fill(gains.to_numpy().astype(np.float64), 0.0)
        self.discount = 1.0 / np.log2(np.arange(2, self.k + 2))
        self.n_judged = qrels[QID].n_unique()
        ideal = (
            qrels.filter(pl.col(RELEVANCE) > 0).sort([QID, RELEVANCE], descending=[False, True])
            .with_columns(pl.int_range(pl.len()).over(QID).alias("i")).filter(pl.col("i") < self.k)
            .group_by(QID).agg((pl.col(RELEVANCE) / (pl.col("i") + 2).log(2)).sum())
        )
        self.ideal = queries.join(ideal, on=QID, how="left", maintain_order="left")[RELEVANCE] \
            .fill_null(0.0).to_numpy()

    def _fill(self, values: np.ndarray, pad: float) -> np.ndarray:
        matrix = np.full(self.shape, pad)
        matrix[self.rows, self.cols] = values
        return matrix

    def order(self, name: str, scores: pl.DataFrame) -> np.ndarray:
        """A stage's ranking of every query's candidates: indices by descending score, then
        docid (pads last). Every candidate must have a non-NaN score."""
        require_columns(scores, [QID, DOCID, SCORE], f"the scores of stage {name!r}")
        if scores.select(QID, DOCID).is_duplicated().any():
            raise InputError(f"stage {name!r} has duplicate (qid, docid) scores")
        joined = self.pairs.join(scores.select(QID, DOCID, pl.col(SCORE).cast(pl.Float64)), on=[QID, DOCID],
                                 how="left", maintain_order="left")[SCORE]
        lacking = joined.is_null().sum() + joined.is_nan().sum()
        if lacking:
            raise InputError(f"stage {name!r} lacks a score (or has NaN) for {lacking} of the "
                             f"{self.pairs.height} candidates")
        values = self._fill(joined.to_numpy(), -np.inf)
        order = np.lexsort((np.broadcast_to(np.arange(self.shape[1]), self.shape), -values), axis=1)
        # int32 indices halve the memory traffic of the search's gathers (and run several times faster)
        return order.astype(np.int32) if values.size < 2**31 else order

    def value(self, order: np.ndarray) -> float:
        """Mean metric over the judged queries (queries without candidates count zero)."""
        top = _gather(self.gains, order[:, : self.k])
        if self.kind == "nDCG":
            dcg = top @ self.discount[: top.shape[1]]
            per_query = np.divide(dcg, self.ideal, out=np.zeros_like(dcg), where=self.ideal > 0)
        else:
            hit = top > 0
            first = hit.argmax(axis=1)
            per_query = np.where(hit.any(axis=1), 1.0 / (first + 1), 0.0)
        return float(per_query.sum() / self.n_judged) if self.n_judged else 0.0


def quick_evaluate(qrels: pl.DataFrame, run: pl.DataFrame, metric: str = "nDCG@10") -> float:
    """The search's own metric on a run (ties by docid); the tests hold it to ir-measures."""
    matrices = _Matrices(run, qrels, metric)
    return matrices.value(matrices.order("run", run))


def _grid(cutoffs: Sequence[int], longest: int) -> list[int]:
    """Distinct cutoffs, largest first; of those that keep every candidate only the smallest."""
    if not cutoffs or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in cutoffs):
        raise ConfigError(f"cutoffs must be integers >= 1, got {list(cutoffs)}", field="cutoff_grid")
    grid = sorted(set(cutoffs), reverse=True)
    return [c for c in grid if c >= longest][-1:] + [c for c in grid if c < longest]


def search_cascades(
    stage_scores: dict[str, pl.DataFrame],
    costs: dict[str, StageCost],
    qrels: pl.DataFrame,
    first_stage: str,
    budget_ms: float,
    cutoff_grid: Sequence[int] = DEFAULT_CUTOFFS,
    metric: str = "nDCG@10",
    max_stages: int | None = None,
) -> SearchResult:
    """Simulate every cascade that starts with ``first_stage`` (see the module docstring).

    ``stage_scores``: each stage's ``qid, docid, score`` on all candidates; the candidates
    are the rows of ``stage_scores[first_stage]``. ``costs``: each stage's expected cost.
    ``max_stages`` bounds a cascade's length (the count grows factorially with the stages).
    Chosen: the highest metric within ``budget_ms``, then the lowest latency.
    """
    if first_stage not in stage_scores:
        raise ConfigError(f"first stage {first_stage!r} has no scores; stages: {sorted(stage_scores)}")
    missing = sorted(set(stage_scores) - set(costs))
    if missing:
        raise ConfigError(f"no cost for stage(s) {missing}", field="costs")
    if not math.isfinite(budget_ms) or budget_ms <= 0:
        raise ConfigError(f"the budget must be > 0 ms, got {budget_ms}", field="budget_ms")
    matrices = _Matrices(stage_scores[first_stage], qrels, metric)
    rankings = {name: _Ranking(matrices.order(name, frame)) for name, frame in stage_scores.items()}
    grid = _grid(list(cutoff_grid), matrices.shape[1])
    others = [name for name in stage_scores if name != first_stage]

    def expand(names: tuple[str, ...], cutoffs: tuple[int, ...], order: np.ndarray,
               latency: float) -> Iterator[CascadeConfig]:
        yield CascadeConfig(names, (*cutoffs, None), matrices.value(order), latency)
        if max_stages is not None and len(names) >= max_stages:
            return
        for name in others:
            if name in names:
                continue
            for c in grid:
                if cutoffs and c > cutoffs[-1]:
                    continue
                width = min(max(c, matrices.k), order.shape[1])
                head = rankings[name].resort(order[:, : min(c, width)])
                tail = order[:, head.shape[1]:width]
                pairs = float(np.minimum(c, matrices.n).mean())
                yield from expand((*names, name), (*cutoffs, c), np.concatenate([head, tail], axis=1),
                                  latency + costs[name].expected_ms(pairs))

    first_cost = costs[first_stage].expected_ms(float(matrices.n.mean()))
    points = list(expand((first_stage,), (), rankings[first_stage].order, first_cost))
    return _select(points, metric, budget_ms)


def _select(points: list[CascadeConfig], metric: str, budget_ms: float) -> SearchResult:
    """Pareto frontier (higher metric, lower latency) and the best point within the budget.

    Sorted by latency (then metric, fewer stages, name), a point is on the frontier when
    its metric beats every cheaper point's; the chosen one is the last such within budget.
    """
    table = pl.DataFrame({
        "point": range(len(points)),
        "cascade": [str(p) for p in points],
        "n_stages": [len(p.stages) for p in points],
        metric: [p.value for p in points],
        "latency_ms": [p.latency_ms for p in points],
    }).sort(["latency_ms", metric, "n_stages", "cascade"], descending=[False, True, False, False])
    best_before = pl.col(metric).cum_max().shift(1).fill_null(-math.inf)
    frontier = table.filter(pl.col(metric) > best_before)
    on_frontier = [points[i] for i in frontier["point"]]
    frontier = frontier.select(
        "cascade",
        pl.Series("stages", [list(p.stages) for p in on_frontier], dtype=pl.List(pl.String)),
        pl.Series("cutoffs", [list(p.cutoffs) for p in on_frontier], dtype=pl.List(pl.Int64)),
        metric, "latency_ms", (pl.col("latency_ms") <= budget_ms).alias("within_budget"),
    )
    fits = [p for p in on_frontier if p.latency_ms <= budget_ms]
    if not fits:
        raise ConfigError(f"no cascade fits the budget of {budget_ms} ms: the cheapest, {on_frontier[0]}, is "
                          f"expected to take {on_frontier[0].latency_ms:.3g} ms per query", field="budget_ms")
    return SearchResult(fits[-1], frontier, len(points), metric, budget_ms)


def replay(config: CascadeConfig, stage_scores: dict[str, pl.DataFrame], dataset: Dataset) -> pl.DataFrame:
    """Run a searched cascade for real (:class:`~distill.cascade.model.Cascade`) on the stored
    scores; the candidates are the first stage's rows. Its run can go to ir-measures."""
    from distill.rankers.loading import RunRanker

    stages = {name: Stage(name, RunRanker(frame, name=name)) for name, frame in stage_scores.items()}
    return config.to_cascade(stages).rerank(dataset, stage_scores[config.stages[0]])


@dataclass
class CascadeBuildConfig:
    """How :func:`build_cascade` searches; ``distill cascade build``'s option defaults come from here.

    ``valid_fraction``: share of the dataset's queries searched on (a :func:`distill.training.groups.holdout`
    sample with ``seed``; 1.0: all). ``metric``: nDCG@k or RR@k, maximised. ``cutoffs``: the grid
    between stages. ``max_stages``: the longest cascade searched. Stage costs not given are
    measured with ``latency_queries`` queries at ``latency_k // 10`` and ``latency_k`` candidates,
    with ``threads`` torch threads (None: torch's default).
    """

    valid_fraction: float = 1.0
    seed: int = 0
    metric: str = "nDCG@10"
    cutoffs: tuple[int, ...] = DEFAULT_CUTOFFS
    max_stages: int | None = None
    latency_queries: int = 20
    latency_k: int = 100
    threads: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.valid_fraction <= 1.0:
            raise ConfigError(f"must be in (0, 1], got {self.valid_fraction}", field="valid_fraction")
        parse_metric(self.metric)
        _grid(list(self.cutoffs), 1)  # a ConfigError for a cutoff that is not an integer >= 1
        self.cutoffs = tuple(self.cutoffs)
        for name, least in (("max_stages", 1), ("latency_queries", 1), ("latency_k", 2), ("threads", 1)):
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
    replay costs nothing). Every stage scores the candidates once; cascades are simulated.
    """
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
    costs = dict(costs or {})
    unknown = sorted(set(costs) - set(loaded))
    if unknown:
        raise ConfigError(f"cost for unknown stage(s) {unknown}; stages: {list(loaded)}", field="costs")
    cost_source = {name: "given" for name in costs}
    for name, s in loaded.items():
        if name not in costs:
            costs[name], cost_source[name] = _measure_cost(proxies.get(name, s), dataset, run, config)
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
    from distill.core.manifest import library_versions

    cascade = replace(
        result.chosen.to_cascade(loaded), budget_ms=budget_ms,
        costs={name: costs[name] for name in result.chosen.stages},
        provenance={
            "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "data": str(dataset.path or dataset.name),
            "split": dataset.split, "queries": dataset.queries.height, **asdict(config),
            "n_evaluated": result.n_evaluated, "budget_share": asdict(share) if share else None,
            "chosen": {"cascade": str(result.chosen), "value": result.chosen.value,
                       "expected_latency_ms": result.chosen.latency_ms},
            "validation": chosen, "first_stage_validation": baseline,
            "frontier": result.frontier.select("cascade", config.metric, "latency_ms").to_dicts(),
            "candidate_stages": {n: {"spec": s.spec, "cost": asdict(costs[n]), "cost_source": cost_source[n]}
                                 for n, s in loaded.items()},
            "versions": library_versions(),
        },
    )
    return CascadeBuild(cascade, result, baseline, chosen, costs)


def _check_budget(budget: float | BudgetShare, stages: Mapping[str, Any]) -> None:
    if isinstance(budget, BudgetShare):
        if budget.stage not in stages:
            raise ConfigError(f"the budget's stage {budget.stage!r} is not one of the stages {list(stages)}",
                              field="budget_share")
    elif not math.isfinite(budget) or budget <= 0:
        raise ConfigError(f"the budget must be > 0 ms, got {budget}", field="budget_ms")


def _validation_part(dataset: Dataset, run: pl.DataFrame, fraction: float, seed: int) -> tuple[Dataset, pl.DataFrame]:
    """The queries searched on: a :func:`~distill.training.groups.holdout` sample of ``fraction`` of them
    (all at 1.0)."""
    from distill.training.groups import holdout

    if fraction >= 1:
        return dataset, run
    keep = pl.DataFrame({QID: sorted(holdout(dataset.queries[QID], fraction, seed))}, schema={QID: pl.String})
    semi: dict[str, Any] = {"on": QID, "how": "semi"}
    return (replace(dataset, queries=dataset.queries.join(keep, **semi), qrels=dataset.qrels.join(keep, **semi)),
            run.join(keep, **semi))


def _load_stages(stages: Mapping[str, BaseRanker | str], known: Mapping[str, Stage] | None = None) -> dict[str, Stage]:
    """Rankers or specs by name -> stages, in order; specs naming files become absolute so a
    written cascade spec works from any folder. With ``known``, names must be among its stages."""
    from distill.cascade.model import stage
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
    lengths = candidates.group_by(QID).len()["len"]
    measured = []
    for size in sorted({max(1, config.latency_k // 10), config.latency_k}):
        latency = measure_latency(ranker, dataset, candidates, k=size, n_queries=config.latency_queries,
                                  prepare=False, threads=config.threads)
        measured.append((float(lengths.clip(upper_bound=size).mean()), latency.mean_ms))
    cost = StageCost.fit(measured)
    log.info("stage %s: %.3f ms per query + %.4f ms per pair (measured)", s.name, cost.per_query_ms, cost.per_pair_ms)
    points = ", ".join(f"{pairs:.1f} pairs: {ms:.3f} ms" for pairs, ms in measured)
    return cost, f"measured on {where} ({points})"


def _score(s: Stage, dataset: Dataset, candidates: pl.DataFrame) -> pl.DataFrame:
    """A stage's scores on all candidates, computed once for the whole search."""
    start = time.perf_counter()
    scores = s.ranker.rerank(dataset, candidates).select(QID, DOCID, SCORE)
    log.info("stage %s scored %d candidates in %.1f s", s.name, scores.height, time.perf_counter() - start)
    return scores

"""Cascades of rerankers under a per-query latency budget, built like PyTerrier pipelines.

``%`` sets a stage's cutoff and ``>>`` chains stages::

    stage("bm25", r) % 1000 >> stage("lightgbm", r2) % 100 >> stage("ce", r3) % 20 >> stage("teacher", r4)

prints itself as ``bm25 % 1000 >> lightgbm % 100 >> ce % 20 >> teacher``, and that string
names the system in reports. The first stage scores the incoming candidates (``bm25``:
the run's own scores) and its cutoff keeps the top k; each next stage scores the survivors
of the one before and keeps its own top k.

Final ranking: the last stage's order first, then the documents cut at earlier stages,
latest stage first, each group in the order of the stage that cut it. Every candidate
stays in the ranking, so deep metrics (R@100, AP) remain comparable between cascades and
with the first stage alone. Final scores are ``n - rank + 1`` (stages' raw scores live on
different scales, so only the order is kept). A cascade with a calibration (built by ``distill
cascade build``) also gives each document its probability of relevance, a ``relevance_score``
column (:mod:`distill.cascade.relevance`).

Budget: with ``budget_ms`` set, queries are reranked one by one. Before each stage after
the first, the time spent on the query plus the stage's expected cost (:class:`StageCost`,
per query fixed ms + ms per pair) is compared with the budget; when it would exceed it,
that stage and all after it are skipped for the query (it keeps the ranking it has) and
the skips are counted per stage in :class:`CascadeStats`. The first stage always runs and
is charged its modelled cost, not its measured time: it stands for the retrieval that made
the candidates, whose time was spent before the cascade saw the query.

A cascade's parts, :class:`Stage` (:func:`stage`) and :class:`StageCost`, live in
:mod:`distill.cascade.stages` and are importable from here too.

Spec format: ``distill-cascade/2`` (written) holds the stages' calibrations, ``calibration``: stage
name -> the JSON of its :class:`~distill.evaluation.calibration.Calibration` (a stage without one is
absent); ``distill-cascade/1`` (before calibrations) still loads, its stages uncalibrated.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from distill.cascade.relevance import reads_rank, stage_relevance
from distill.cascade.stages import Stage, StageCost, check_cutoff, describe, stage  # noqa: F401  (stage: importable here too)
from distill.core.errors import ConfigError, InputError
from distill.core.io import write_json_atomic
from distill.core.schema import DOCID, QID, RANK, SCORE, require_columns
from distill.data.beir import Dataset
from distill.evaluation.calibration import RELEVANCE_SCORE
from distill.rankers.base import BaseRanker, Ranker, settle_precision

if TYPE_CHECKING:
    from distill.cascade.runtime import RankResult, Runtime

SPEC_FORMAT = "distill-cascade/2"
SPEC_FORMATS = ("distill-cascade/1", SPEC_FORMAT)  # what from_spec reads; /1 has no calibrations
_RUNTIME_LOCK = threading.Lock()
_STAGE = "_stage"


@dataclass
class CascadeStats:
    """What the last :meth:`Cascade.rerank` did: per-query wall time and skipped stages."""

    queries: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    latency_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Skip counts and latency percentiles (None when queries were reranked in one batch)."""
        ms = np.asarray(self.latency_ms)
        pct = (lambda q: float(np.percentile(ms, q))) if ms.size else (lambda q: None)
        return {
            "queries": self.queries, "skipped": dict(self.skipped),
            "p50_ms": pct(50), "p95_ms": pct(95), "mean_ms": float(ms.mean()) if ms.size else None,
        }


@dataclass
class Cascade(BaseRanker):
    """A chain of stages; a :class:`~distill.rankers.base.Ranker` itself (see the module docstring).

    ``costs`` (by stage name) is needed for every stage when ``budget_ms`` is set.
    ``provenance`` records how the cascade was chosen (validation metrics, the point picked)
    and is written with the spec.
    """

    stages: tuple[Stage, ...]
    budget_ms: float | None = None
    costs: dict[str, StageCost] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    stats: CascadeStats = field(default_factory=CascadeStats, init=False, repr=False, compare=False)
    _runtime: Runtime | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.stages = tuple(self.stages)
        if not self.stages or not all(isinstance(s, Stage) for s in self.stages):
            raise ConfigError("a cascade needs at least one Stage")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ConfigError(f"stage names must be unique: {names}")
        if self.budget_ms is not None:
            if isinstance(self.budget_ms, bool) or not isinstance(self.budget_ms, (int, float)) \
                    or not math.isfinite(self.budget_ms) or self.budget_ms <= 0:
                raise ConfigError(f"the budget must be a number > 0 (ms), got {self.budget_ms!r}", field="budget_ms")
            missing = [n for n in names if n not in self.costs]
            if missing:
                raise ConfigError(f"a budget needs the expected cost of every stage; missing: {missing}",
                                  field="costs")

    # -- building ---------------------------------------------------------------------------

    def __rshift__(self, other: Stage | Cascade) -> Cascade:
        if isinstance(other, Stage):
            other = Cascade((other,))
        if not isinstance(other, Cascade):
            return NotImplemented
        return Cascade(self.stages + other.stages, self.budget_ms, {**self.costs, **other.costs},
                       dict(self.provenance))

    def __mod__(self, k: int) -> Cascade:
        """Cut the cascade's output: the last stage keeps its top ``k``."""
        return replace(self, stages=self.stages[:-1] + (self.stages[-1] % k,))

    def __str__(self) -> str:
        return describe([s.name for s in self.stages], [s.cutoff for s in self.stages])

    @property
    def name(self) -> str:
        return str(self)

    @property
    def calibrated(self) -> bool:
        """Whether any stage has a calibration: then :meth:`rerank` adds a ``relevance_score`` column."""
        return any(s.calibration is not None for s in self.stages)

    # -- ranking ----------------------------------------------------------------------------

    def prepare(self, dataset: Dataset) -> None:
        """Run every stage's one-off precomputation (e.g. document embeddings)."""
        for s in self.stages:
            s.ranker.prepare(dataset)

    def settle_precision(self, queries: Sequence[str], docs: Sequence[str], total_pairs: int | None = None) -> None:
        """Settle every stage's pending reduced precision on these pairs (see ``Teacher.settle_precision``)."""
        for s in self.stages:
            s.ranker.settle_precision(queries, docs, total_pairs=total_pairs)

    def rerank(self, dataset: Dataset, run: pl.DataFrame, *, per_query: bool = False) -> pl.DataFrame:
        """Rank ``run`` through the stages; ``qid, docid, score`` for every row of ``run``, and
        ``relevance_score`` when the cascade is :attr:`calibrated`.

        Queries go one by one when a budget is set or ``per_query`` is true (then each
        query's wall time is recorded in :attr:`stats`); otherwise each stage scores all
        queries' survivors in one call.
        """
        require_columns(run, [QID, DOCID], "candidate run")
        incoming = run.select([c for c in (QID, DOCID, SCORE) if c in run.columns])
        self.stats = CascadeStats(skipped={s.name: 0 for s in self.stages})
        if incoming.is_empty():
            relevance = [pl.lit(0.0).alias(RELEVANCE_SCORE)] if self.calibrated else []
            return incoming.select(QID, DOCID, pl.lit(0.0).alias(SCORE), *relevance)
        if self.budget_ms is None and not per_query:
            ranked = self._rank(dataset, incoming)
        else:
            for s in self.stages:  # on a sample of pairs, not on the first query's few
                settle_precision(s.ranker, dataset, incoming)
            parts = []
            for query in incoming.partition_by(QID, maintain_order=True):
                start = time.perf_counter()
                parts.append(self._rank(dataset, query))
                self.stats.latency_ms.append((time.perf_counter() - start) * 1000.0)
            ranked = pl.concat(parts)
        self.stats.queries = incoming[QID].n_unique()
        return ranked

    def _rank(self, dataset: Dataset, incoming: pl.DataFrame) -> pl.DataFrame:
        """Rank a block of queries (one query when a budget is set); see the module docstring.

        Each stage's rows are sorted by (qid, its order), so the final ranking is the last
        stage's rows, then each cut group from the latest stage back, stably sorted by qid.
        Few polars calls per stage on purpose: their fixed cost counts in every query's latency.
        """
        cut_away: list[pl.DataFrame] = []
        survivors, kept = incoming, incoming
        spent_ms, start = 0.0, time.perf_counter()
        for i, s in enumerate(self.stages):
            if self.budget_ms is not None:
                expected = self.costs[s.name].expected_ms(survivors.height)
                if i == 0:
                    spent_ms = expected
                elif spent_ms + (time.perf_counter() - start) * 1000.0 + expected > self.budget_ms:
                    for skipped in self.stages[i:]:
                        self.stats.skipped[skipped.name] += 1
                    break
            kept = self._score(s, dataset, survivors)
            if self.calibrated:
                kept = kept.with_columns(pl.Series(RELEVANCE_SCORE, stage_relevance(
                    s.calibration, kept[_STAGE].to_numpy(), kept[RANK].to_numpy(), reads_rank(s.ranker))))
            if i == 0:
                start = time.perf_counter()
            if s.cutoff is not None:
                within = kept[RANK] <= s.cutoff
                cut_away.append(kept.filter(~within))
                kept = kept.filter(within)
            survivors = kept.select(incoming.columns)
        final = pl.concat([kept, *reversed(cut_away)]).lazy().sort(QID, maintain_order=True)
        position = pl.int_range(pl.len()).over(QID)
        relevance = [RELEVANCE_SCORE] if self.calibrated else []
        return final.select(QID, DOCID, (pl.len().over(QID) - position).cast(pl.Float64).alias(SCORE),
                            *relevance).collect()

    @staticmethod
    def _score(s: Stage, dataset: Dataset, survivors: pl.DataFrame) -> pl.DataFrame:
        """The survivors with the stage's score (``_stage``) and ``rank``, sorted by qid then
        rank (score descending, docid on ties); a ranker that skips rows is an error."""
        out = s.ranker.rerank(dataset, survivors)
        require_columns(out, [QID, DOCID, SCORE], f"the scores of stage {s.name!r}")
        scored = (
            survivors.lazy()
            .join(out.lazy().select(QID, DOCID, pl.col(SCORE).cast(pl.Float64).alias(_STAGE)), on=[QID, DOCID],
                  how="left")
            .sort([QID, _STAGE, DOCID], descending=[False, True, False])
            .with_columns(pl.int_range(1, pl.len() + 1).over(QID).alias(RANK))
            .collect()
        )
        lacking = scored[_STAGE].null_count() + scored[_STAGE].is_nan().sum()
        if scored.height != survivors.height or lacking:
            raise InputError(f"stage {s.name!r} returned {out.height} scores for {survivors.height} candidates "
                             f"({lacking} missing or NaN, or duplicates)")
        return scored

    def run_stats(self) -> dict[str, Any]:
        """The last :meth:`rerank`'s :class:`CascadeStats` summary (skipped stages, latency)."""
        return self.stats.summary()

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "cascade": str(self),
            "stages": [{"name": s.name, "cutoff": s.cutoff, "spec": s.spec, "ranker": s.ranker.get_config_dict(),
                        "calibration": None if s.calibration is None else s.calibration.method}
                       for s in self.stages],
            "budget_ms": self.budget_ms,
            "costs": {name: asdict(cost) for name, cost in self.costs.items()},
        }

    # -- runtime: one query's documents (distill.cascade.runtime) ------------------------------------

    @classmethod
    def load(cls, path: str | Path, corpus: str | Path | None = None) -> Cascade:
        """Read a cascade spec and prepare it for :meth:`rank`. ``corpus`` (a ``corpus.jsonl``
        or BEIR folder) names documents that requests may send by id; their precomputed parts
        (LightGBM's index, a bi-encoder's embeddings, stored next to the model) are reused."""
        cascade = cls.read_spec(path)
        cascade.prepare_runtime(corpus)
        return cascade

    def prepare_runtime(self, corpus: str | Path | pl.DataFrame | Dataset | None = None) -> None:
        """Prepare :meth:`rank` (as :meth:`load` does) with ``corpus``: a path, a ``docid, title, text``
        table or a dataset's corpus (as a cascade in a cascade is prepared); without one, every
        document is sent as text."""
        from distill.cascade.runtime import Runtime, RuntimeCorpus

        if isinstance(corpus, Dataset):
            corpus = corpus.corpus
        if isinstance(corpus, pl.DataFrame):
            known = RuntimeCorpus(corpus)
        else:
            known = None if corpus is None else RuntimeCorpus.read(corpus)
        self._runtime = Runtime(self, known)

    def rank(self, query: str, documents: Sequence[str | Mapping[str, Any]], deadline_ms: float | None = None,
             top_k: int | None = None, started: float | None = None, min_score: float | None = None) -> RankResult:
        """Rank one query's ``documents`` (texts or ``{"id", "text", "title"?, "score"?}``) as
        :meth:`rerank` would; skip stages that would end after ``deadline_ms`` from ``started``
        (a ``time.perf_counter()`` value, default now); drop documents whose relevance score is below
        ``min_score``. See :mod:`distill.cascade.runtime`."""
        return self._require_runtime().rank(query, documents, deadline_ms, top_k, started, min_score)

    def estimate_ms(self, n_docs: int | Sequence[int]) -> list[float]:
        """Each stage's expected milliseconds for ``n_docs`` candidates, or for documents of these lengths
        in characters (costed by length, :mod:`distill.inference.lengths`), from the spec's costs (0 for a first
        stage that replays the given scores)."""
        return self._require_runtime().estimate_ms(n_docs)

    def batchable_stages(self) -> list[str]:
        """The stages whose model can score several requests' documents in one call (cross-request batching in
        ``distill serve``, :mod:`distill.serve.batcher`)."""
        return [st.name for st in self._require_runtime().stages if st.scorer is not None and st.scorer.batchable]

    def _require_runtime(self) -> Runtime:
        if self._runtime is None:  # a cascade built in code: documents come without a corpus
            with _RUNTIME_LOCK:
                if self._runtime is None:
                    self.prepare_runtime()
        return self._runtime

    # -- spec -------------------------------------------------------------------------------

    def to_spec(self) -> dict[str, Any]:
        """A JSON-able description from which :meth:`from_spec` rebuilds the cascade."""
        lacking = [s.name for s in self.stages if s.spec is None]
        if lacking:
            raise ConfigError(f"stage(s) {lacking} have no ranker spec to write; "
                              "build them with stage(name, ranker, spec=...)")
        return {
            "format": SPEC_FORMAT,
            "cascade": str(self),
            "stages": [{"name": s.name, "ranker": s.spec, "cutoff": s.cutoff} for s in self.stages],
            "calibration": {s.name: s.calibration.to_json() for s in self.stages if s.calibration is not None},
            "costs": {name: asdict(cost) for name, cost in self.costs.items()},
            "budget_ms": self.budget_ms,
            "provenance": self.provenance,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any], load: Callable[..., Ranker] | None = None,
                  source: str | Path | None = None) -> Cascade:
        """Rebuild a cascade; each ranker is ``load(spec, name=stage_name)``
        (default :func:`distill.rankers.loading.load_ranker`). ``source`` locates errors."""
        from distill.cascade.spec import spec_calibrations

        if load is None:
            from distill.rankers.loading import load_ranker as load
        if not isinstance(spec, dict) or spec.get("format") not in SPEC_FORMATS:
            found = spec.get("format") if isinstance(spec, dict) else type(spec).__name__
            raise ConfigError(f"not a cascade spec (format {found!r}, expected one of {list(SPEC_FORMATS)})",
                              path=source, field="format")
        entries = spec.get("stages")
        if not isinstance(entries, list) or not entries:
            raise ConfigError("expected a non-empty list", path=source, field="stages")
        calibrations = spec_calibrations(spec, entries, source)
        stages = []
        for i, entry in enumerate(entries):
            where = f"stages[{i}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) \
                    or not isinstance(entry.get("ranker"), str):
                raise ConfigError("expected {name: str, ranker: str, cutoff: int | null}", path=source, field=where)
            try:
                cutoff = None if entry.get("cutoff") is None else check_cutoff(entry["cutoff"])
                stages.append(Stage(entry["name"], load(entry["ranker"], name=entry["name"]), cutoff, entry["ranker"],
                                    calibrations.get(entry["name"])))
            except ConfigError as err:
                raise ConfigError(err.message, path=source, field=f"{where}.{err.field or 'name'}") from None
        costs_in = spec.get("costs") or {}
        if not isinstance(costs_in, dict):
            raise ConfigError("expected an object of stage name -> cost", path=source, field="costs")
        try:
            costs = {name: StageCost(**cost) for name, cost in costs_in.items()}
        except (TypeError, ConfigError) as err:
            raise ConfigError(f"expected {{per_query_ms, per_pair_ms}} numbers ({err})", path=source,
                              field="costs") from None
        provenance = spec.get("provenance") or {}
        try:
            return cls(tuple(stages), spec.get("budget_ms"), costs, provenance if isinstance(provenance, dict) else {})
        except ConfigError as err:
            raise ConfigError(err.message, path=source, field=err.field) from None

    def write_spec(self, path: str | Path) -> None:
        """Write :meth:`to_spec` as JSON, atomically, its ranker paths relative to the spec's folder."""
        from distill.cascade.spec import spec_for_folder

        write_json_atomic(path, spec_for_folder(self.to_spec(), Path(path).parent))

    @classmethod
    def read_spec(cls, path: str | Path, load: Callable[..., Ranker] | None = None) -> Cascade:
        """Read a spec written by :meth:`write_spec` and load its rankers, their relative paths from the
        spec's folder (see :mod:`distill.cascade.spec`: a spec naming itself is an InputError)."""
        from distill.cascade.spec import read_spec_file

        with read_spec_file(path) as body:
            return cls.from_spec(body, load, source=path)


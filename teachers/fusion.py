"""A fused teacher: per-query normalized interpolation of one or several teachers with the first stage.

A teacher trained on few judgements can end below BM25 (one epoch on a 400-query BEIR
dataset: validation nDCG@10 0.218 against 0.367), and every student distilled from it
learns a worse ranking than the one it reranks. Fusing guards against that: each
component's scores are standardised per query (z-scores over the query's candidates, so
a logit and a BM25 score become comparable), and the fused score is
``sum_i w_i * z_i`` with weights on a simplex grid chosen by nDCG@10 on validation
queries. Weight 1 on the first stage gives BM25's own ranking, so on validation the fused
teacher is never below it; weight 1 on the teacher gives the teacher's.

Several teacher caches (scored or imported) fuse the same way into an ensemble, as the
MarginMSE paper's students learnt from (Hofstätter et al., 2020): each cache is one more
component, named ``teacher`` (the first, as with a single teacher), ``teacher_2``,
``teacher_3``, ... The grid has one weighting per way of splitting 1 into ``1 / step``
steps over the components (66 for three components at step 0.1, 286 for four), bounded
by :data:`MAX_WEIGHTINGS`: past it a larger step is asked for.

Each component keeps its own scores (a teacher its cache, BM25 its run files, any other
scorer is applied to the same pairs); the fused scores go to a new cache whose
fingerprint records the components' fingerprints, the weights and the validation that
chose them. Students read that cache like any other.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from math import comb
from pathlib import Path
from typing import Any

import polars as pl

from distill.core.errors import ConfigError, InputError
from distill.core.schema import DOCID, QID, SCORE

log = logging.getLogger(__name__)

NORMALIZATION = "zscore-per-query"
MAX_WEIGHTINGS = 5000  # weightings the grid search evaluates at most (each is one nDCG@10 over the valid queries)
FIRST_STAGE = "bm25"


def teacher_names(count: int) -> list[str]:
    """The component names of ``count`` teacher caches, in their order: ``teacher`` for the first (the
    name a single fused teacher has always had), then ``teacher_2``, ``teacher_3``, ..."""
    return ["teacher", *(f"teacher_{i}" for i in range(2, count + 1))]


def zscores(scores: pl.DataFrame) -> pl.DataFrame:
    """``qid, docid, score`` with each query's scores standardised (a query whose scores are all
    equal gets 0 everywhere: it says nothing about the order)."""
    score = pl.col(SCORE).cast(pl.Float64)
    std = score.std(ddof=0).over(QID)
    return scores.select(QID, DOCID, pl.when(std > 0).then((score - score.mean().over(QID)) / std)
                         .otherwise(0.0).alias(SCORE))


def fuse(components: dict[str, pl.DataFrame], weights: dict[str, float]) -> pl.DataFrame:
    """``sum_i weights[i] * zscore(components[i])`` over the pairs every component scored."""
    frame = None
    for name, scores in components.items():
        part = zscores(scores).rename({SCORE: name})
        frame = part if frame is None else frame.join(part, on=[QID, DOCID], how="inner")
    total = sum((pl.col(name) * float(weights.get(name, 0.0)) for name in components), pl.lit(0.0))
    return frame.select(QID, DOCID, total.alias(SCORE))


def _compositions(total: int, parts: int) -> Iterator[tuple[int, ...]]:
    """Every ``parts``-tuple of non-negative integers summing to ``total``."""
    if parts == 1:
        yield (total,)
        return
    for k in range(total + 1):
        for rest in _compositions(total - k, parts - 1):
            yield (k, *rest)


def weight_grid(names: list[str], step: float) -> list[dict[str, float]]:
    """Every weighting of ``names`` on the simplex in steps of ``step`` (each weight k * step, sum 1);
    refused past :data:`MAX_WEIGHTINGS` weightings, naming the smallest decimal step that fits."""
    n = round(1 / step)
    if abs(n * step - 1) > 1e-9 or n < 1:
        raise ConfigError(f"the weight step must divide 1, got {step}", field="step")
    size = comb(n + len(names) - 1, len(names) - 1)
    if size > MAX_WEIGHTINGS:
        fits = max(m for m in range(1, n) if comb(m + len(names) - 1, len(names) - 1) <= MAX_WEIGHTINGS
                   and 10**6 % m == 0)  # a step written exactly in decimals: 0.5, 0.25, 0.2, 0.125, ...
        raise ConfigError(f"{len(names)} components at step {step} make {size} weightings, more than "
                          f"{MAX_WEIGHTINGS}: use --step {1 / fits:g} or fewer components", field="step")
    return [{name: round(k / n, 6) for name, k in zip(names, ks)} for ks in _compositions(n, len(names))]


@dataclass
class FusedWeights:
    """The weights chosen on validation, and what every candidate weighting scored there."""

    weights: dict[str, float]
    value: float
    alone: dict[str, float]  # each component by itself on validation
    metric: str
    queries: int

    def to_dict(self) -> dict[str, Any]:
        return {"weights": self.weights, "value": self.value, "alone": self.alone, "metric": self.metric,
                "queries": self.queries}


def choose_weights(components: dict[str, pl.DataFrame], qrels: pl.DataFrame, *, step: float = 0.1,
                   metric: str = "nDCG@10") -> FusedWeights:
    """The weighting of ``components`` (scores of the validation candidates) with the best mean
    ``metric`` over ``qrels``' queries; ties go to more weight on the first component (the teacher)."""
    from distill.evaluation.metrics import per_query

    names = list(components)
    if len(names) < 2:
        raise ConfigError("fusing needs at least two components (a teacher and the first stage)")
    joined = fuse(components, {names[0]: 1.0})  # the pairs all components scored
    standardised = {name: zscores(s).join(joined.select(QID, DOCID), on=[QID, DOCID], how="semi")
                    for name, s in components.items()}

    def value(weights: dict[str, float]) -> float:
        return float(per_query(qrels, fuse(standardised, weights), [metric])["value"].mean())

    scored = [(value(w), tuple(w[n] for n in names), w) for w in weight_grid(names, step)]
    best = max(scored, key=lambda item: (round(item[0], 12), item[1]))
    alone = {name: value({name: 1.0}) for name in names}
    return FusedWeights(best[2], best[0], alone, metric, qrels[QID].n_unique())


def read_teachers(caches: Sequence[str | Path]) -> tuple[dict[str, pl.DataFrame], dict[str, dict[str, Any]]]:
    """The scores and manifests of teacher ``caches``, by component name (:func:`teacher_names`);
    caches scored on different corpora are refused."""
    from distill.cache.store import read_scores

    if not caches:
        raise ConfigError("fusing needs a teacher cache", field="cache")
    scores, manifests = {}, {}
    for name, cache in zip(teacher_names(len(caches)), caches):
        scores[name], manifests[name] = read_scores(cache)
    corpora = {str(c): m.get("corpus_hash") for c, m in zip(caches, manifests.values()) if m.get("corpus_hash")}
    if len(set(corpora.values())) > 1:
        raise InputError("the teacher caches were scored on different corpora: "
                         + ", ".join(f"{c} ({h})" for c, h in corpora.items()), path=caches[0])
    return scores, manifests


def check_fused_output(out: str | Path, datasets: Sequence[str | Path] = ()) -> None:
    """Refuse, before any work, an ``out`` the fused scores may not be added to (:class:`InputError`, exit 2):
    an input dataset folder (or one inside or around it), a file, or an existing folder that is neither a teacher
    cache (its manifest is read) nor empty of all but a new cache's own empty folders. It is a cache the fused
    scores are added to, never replaced, so there is no ``--overwrite``."""
    from distill.cache import files as cache_files
    from distill.cache.store import TeacherCache
    from distill.core.outputs import check_output

    out = Path(out)
    check_output(out, datasets=datasets, folder=True)
    if out.exists() and not out.is_dir():
        raise InputError("is a file, not a teacher cache folder; choose another --out", path=out)
    if (out / cache_files.MANIFEST).is_file():
        TeacherCache.open(out)  # a teacher cache, or an error naming what is wrong with its manifest
    else:
        cache_files.check_new_folder(out)


def fuse_teacher(out: str | Path, teacher_cache: str | Path | Sequence[str | Path], first_stage: list[pl.DataFrame],
                 valid_qrels: pl.DataFrame, *, others: dict[str, pl.DataFrame] | None = None, step: float = 0.1,
                 corpus_hash: str | None = None, sources: dict[str, Any] | None = None) -> FusedWeights:
    """Choose weights for the cached teacher(s) (``teacher_cache``: one cache, or several fused as an
    ensemble), the first stage (``first_stage``: runs with its scores, covering the cached pairs) and
    ``others`` (scores of the same pairs) on the validation queries (``valid_qrels``; their candidates
    must be in the caches), and write the fused scores of every pair all components scored to the
    cache ``out``, its fingerprint naming the components, weights and validation."""
    from distill.cache.store import TeacherCache

    check_fused_output(out)
    caches = [teacher_cache] if isinstance(teacher_cache, (str, Path)) else list(teacher_cache)
    teachers, manifests = read_teachers(caches)
    clash = sorted(set(others or {}) & {*teachers, FIRST_STAGE})
    if clash:
        raise ConfigError(f"a scorer may not be named {', '.join(clash)}: the teachers and the first stage are",
                          field="scorer")
    bm25 = pl.concat([r.select(QID, DOCID, pl.col(SCORE).cast(pl.Float64)) for r in first_stage]).unique(
        [QID, DOCID], keep="first")
    components = {**teachers, FIRST_STAGE: bm25, **(others or {})}
    valid_ids = valid_qrels.select(QID).unique()
    on_valid = {name: s.join(valid_ids, on=QID, how="semi") for name, s in components.items()}
    empty = [name for name, s in on_valid.items() if s.height == 0]
    if empty:
        raise InputError(f"no scores of the validation queries from {', '.join(empty)}: score the validation "
                         f"candidates with the teacher (and the other scorers) first", path=caches[0])
    chosen = choose_weights(on_valid, valid_qrels, step=step)
    log.info("fused teacher: weights %s, validation %s %.4f (alone: %s)", chosen.weights, chosen.metric, chosen.value,
             ", ".join(f"{k} {v:.4f}" for k, v in chosen.alone.items()))
    fused = fuse(components, chosen.weights)
    dropped = teachers["teacher"].height - fused.height
    if dropped:
        log.warning("%d scores of the first teacher cache have no score from another component: left out of the "
                    "fused cache", dropped)
    fingerprint = {"kind": "fused", "normalization": NORMALIZATION, "weights": chosen.weights,
                   "components": {**{name: m.get("teacher") for name, m in manifests.items()}, **(sources or {})},
                   "chosen_on": {k: v for k, v in chosen.to_dict().items() if k != "weights"}}
    cache = TeacherCache.create_or_open(out, fingerprint, corpus_hash or manifests["teacher"].get("corpus_hash"))
    missing = cache.missing(fused.select(QID, DOCID))
    if missing.height:
        cache.append(fused.join(missing, on=[QID, DOCID], how="semi").with_columns(pl.col(SCORE).cast(pl.Float32)))
    return chosen

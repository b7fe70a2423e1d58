"""A cascade's relevance scores: the probability that a document is relevant, from the stage that ranked it.

Each stage's raw scores live on their own scale (a cross-encoder's logits, a LightGBM sum of trees,
the retrieval's BM25), so a cascade maps them to probabilities stage by stage. ``distill cascade
build`` fits one :class:`~distill.evaluation.calibration.Calibration` per stage (:func:`fit_stage_calibrations`)
and stores it in the spec. A document's relevance score is that of the latest stage that scored it:
the last stage that ran for the documents it kept, and for a document cut at an earlier stage, the
probability that stage gave it (a ranking therefore need not be sorted by relevance below the last
stage's documents).

What a stage's calibration reads (:func:`stage_input`):

- a stage that replays the candidates' own scores (the first stage ``bm25``) is read by its rank,
  ``x = -log(rank)`` (rank 1 first): a request's scores may come from another retriever on
  another scale, or be absent (the input order), while the position is always defined;
- any other stage by its raw score.

A stage without a calibration (a ``distill-cascade/1`` spec, a cascade built in code, or a stage
whose validation documents were too few to fit) answers ``sigmoid(x)`` of the same input: the
logistic of a model's score, and ``1 / (1 + rank)`` for the replayed first stage. That is a
probability in [0, 1] that keeps the stage's order, not a calibrated one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import polars as pl

from distill.cascade.stages import Stage
from distill.core.schema import DOCID, QID, RANK, RELEVANCE, SCORE, with_ranks
from distill.evaluation.calibration import (
    PRECISION_AT,
    Calibration,
    expected_calibration_error,
    fit_calibration,
    sigmoid,
    threshold_precision,
)
from distill.rankers.base import BaseRanker

log = logging.getLogger(__name__)


def reads_rank(ranker: BaseRanker) -> bool:
    """Whether a stage's relevance reads its rank, not its score: the candidates' own scores replayed."""
    from distill.rankers.loading import RunRanker

    return isinstance(ranker, RunRanker) and ranker.scores is None


def stage_input(scores: np.ndarray, ranks: np.ndarray, by_rank: bool) -> np.ndarray:
    """What a stage's calibration reads: ``-log(rank)`` (1-based) ``by_rank``, else the raw score."""
    if by_rank:
        return -np.log(np.asarray(ranks, dtype=np.float64))
    return np.asarray(scores, dtype=np.float64)


def stage_relevance(calibration: Calibration | None, scores: np.ndarray, ranks: np.ndarray,
                    by_rank: bool) -> np.ndarray:
    """The probability of relevance of documents a stage scored (``scores``) and ranked (``ranks``, 1-based)
    among the documents it scored: its calibration, else the sigmoid rule (see the module docstring)."""
    x = stage_input(scores, ranks, by_rank)
    return sigmoid(x) if calibration is None else calibration(x)


def fit_stage_calibrations(stages: Sequence[Stage], scores: Mapping[str, pl.DataFrame], qrels: pl.DataFrame,
                           method: str, depth: int | None) -> tuple[tuple[Stage, ...], dict[str, Any]]:
    """``stages`` with a calibration each, fitted on the validation documents each ranks in this cascade.

    ``scores``: each stage's ``qid, docid, score`` on all validation candidates (the first stage's rows);
    stage ``i`` ranks the survivors of the cutoffs before it, as the cascade would. Each calibration is
    fitted on the top ``depth`` documents of its stage's ranking per query (None: all it ranks): the
    documents a request returns when the cascade ends there, so the probabilities are calibrated where
    they are read. Only queries the qrels judge count; relevant: grade > 0. Also returns what each fit
    saw (``on, documents, relevant``, its in-sample ECE and precision at relevance >= 0.5), for the
    spec's provenance and to compare with the test queries' (``distill evaluate``).
    """
    survivors = scores[stages[0].name].select(QID, DOCID).join(qrels.select(QID).unique(), on=QID, how="semi")
    grades = qrels.select(QID, DOCID, RELEVANCE)
    calibrated, seen = [], {}
    for s in stages:
        ranked = with_ranks(survivors.join(scores[s.name].select(QID, DOCID, SCORE), on=[QID, DOCID], how="left"))
        top = ranked if depth is None else ranked.filter(pl.col(RANK) <= depth)
        labels = (top.join(grades, on=[QID, DOCID], how="left", maintain_order="left")[RELEVANCE]
                  .fill_null(0) > 0).to_numpy()
        by_rank = reads_rank(s.ranker)
        x = stage_input(top[SCORE].to_numpy(), top[RANK].to_numpy(), by_rank)
        calibration = fit_calibration(x, labels, method) if len(x) else None
        if calibration is None:
            log.warning("stage %s ranks no judged validation document: its relevance stays uncalibrated", s.name)
        else:
            probabilities = calibration(x)
            precision = threshold_precision(probabilities, labels)  # NaN (no document at 0.5) is stored as null
            seen[s.name] = {"on": "rank" if by_rank else "score", "documents": calibration.documents,
                            "relevant": calibration.relevant, "ece": expected_calibration_error(probabilities, labels),
                            PRECISION_AT: None if np.isnan(precision) else precision}
        calibrated.append(replace(s, calibration=calibration))
        if s.cutoff is not None:
            survivors = ranked.filter(pl.col(RANK) <= s.cutoff).select(QID, DOCID)
    return tuple(calibrated), seen

"""Validating a trained student: its nDCG@10 on held-out judged queries, and collapse detection.

A student is scored the way it will be used: loaded from its folder as a ranker
(:func:`distill.rankers.loading.load_ranker`) and reranking the validation queries' first-stage
candidates. Two failures are called a *collapse*, because a user should never get such a
student silently:

- **near-constant scores**: on most validation queries every candidate gets (almost) the
  same score, so the ranking is an arbitrary tie-break;
- **worse than the first stage**: its validation nDCG@10 is below the candidates' own
  ranking (BM25), so putting it in a pipeline makes results worse.

:func:`check_collapse` logs a loud warning and raises :class:`StudentCollapseError` (exit
code 2 on the command line) unless collapse is explicitly allowed.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import polars as pl

from distill.core.errors import DistillError
from distill.core.schema import QID, SCORE, require_columns
from distill.data.beir import Dataset

log = logging.getLogger(__name__)

METRIC = "nDCG@10"
# per-query score spread (std) under which a query's candidates count as tied
TIE_STD = 1e-6
# share of validation queries with tied candidates from which a student counts as collapsed
TIED_SHARE = 0.5


class StudentCollapseError(DistillError):
    """A trained student that collapsed on validation (see the module docstring)."""


@dataclass
class ValidationResult:
    """One student's validation: the metric, the first stage's, and how spread its scores are."""

    metric: str
    value: float
    first_stage: float
    queries: int
    tied_share: float  # share of queries whose candidates all got the same score (std < TIE_STD)
    median_std: float  # median over queries of the per-query std of the student's scores

    @property
    def problems(self) -> list[str]:
        """What is wrong with this student, in words (empty when healthy)."""
        found = []
        if self.tied_share >= TIED_SHARE:
            found.append(f"near-constant scores ({self.tied_share:.0%} of {self.queries} validation queries have "
                         f"all candidates tied; median per-query std {self.median_std:.2g})")
        if self.value < self.first_stage:
            found.append(f"worse than the first stage ({self.metric} {self.value:.4f} vs {self.first_stage:.4f} "
                         f"on {self.queries} validation queries)")
        return found

    def to_dict(self) -> dict:
        return {**asdict(self), "collapsed": bool(self.problems), "problems": self.problems}


@dataclass
class Validation:
    """Held-out judged queries and their first-stage candidates (``qid, docid, score``)."""

    dataset: Dataset
    run: pl.DataFrame
    metric: str = METRIC

    def __post_init__(self) -> None:
        require_columns(self.run, [QID, "docid", SCORE], "validation run")
        self.run = self.run.join(self.dataset.queries.select(QID), on=QID, how="semi")
        if self.run.height == 0:
            raise DistillError(f"the validation run has no candidates for the {self.dataset.queries.height} "
                               f"queries of split {self.dataset.split!r}")
        self._first_stage: float | None = None

    @classmethod
    def load(cls, data: str | Path, split: str, run: str | Path | None = None, k: int = 100) -> Validation:
        """Split ``split`` of the BEIR folder ``data``, with the candidates of the TREC run ``run``
        (default: BM25's top ``k``, retrieved now)."""
        from distill.data.beir import load_beir

        dataset = load_beir(data, split)
        if run is None:
            from distill.data.bm25 import bm25_run

            return cls(dataset, bm25_run(dataset, k))
        from distill.data.runs import read_run

        return cls(dataset, read_run(run))

    @property
    def first_stage(self) -> float:
        if self._first_stage is None:
            self._first_stage = self.evaluate(self.run)
        return self._first_stage

    def evaluate(self, scored: pl.DataFrame) -> float:
        """The mean of the metric over the validation queries (a query without candidates counts 0)."""
        from distill.evaluation.metrics import per_query

        return float(per_query(self.dataset.qrels, scored, [self.metric])["value"].mean())

    def score_folder(self, folder: str | Path) -> ValidationResult:
        """Load the ranker at ``folder`` and validate it."""
        from distill.rankers.loading import load_ranker

        ranker = load_ranker(str(folder), name="student")
        ranker.prepare(self.dataset)
        return self.score_run(ranker.rerank(self.dataset, self.run))

    def score_run(self, scored: pl.DataFrame) -> ValidationResult:
        """Validate a student's scores over the validation candidates."""
        spread = scored.group_by(QID).agg(pl.col(SCORE).std(ddof=0).fill_null(0.0).alias("std"))
        return ValidationResult(
            metric=self.metric, value=self.evaluate(scored), first_stage=self.first_stage,
            queries=spread.height, tied_share=float((spread["std"] < TIE_STD).mean()),
            median_std=float(spread["std"].median()),
        )


def check_collapse(result: ValidationResult, what: str, *, allow: bool = False) -> None:
    """Warn loudly about a collapsed student and raise :class:`StudentCollapseError` unless ``allow``."""
    if not result.problems:
        log.info("%s: validation %s %.4f (first stage %.4f, %+.4f)", what, result.metric, result.value,
                 result.first_stage, result.value - result.first_stage)
        return
    message = f"{what} COLLAPSED: " + "; ".join(result.problems)
    log.warning("!" * 72)
    log.warning(message)
    log.warning("!" * 72)
    if not allow:
        raise StudentCollapseError(
            f"{message}. It was saved for inspection; train longer or on more queries (--rounds, --queries), "
            "check the teacher (`distill cache info`), or pass --allow-collapse to accept it")

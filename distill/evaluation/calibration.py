"""Calibrated relevance: a ranker's raw score mapped to the probability that the document is relevant.

A :class:`Calibration` is fitted on ``(score, relevant)`` pairs, relevant meaning a qrels grade > 0
(documents the qrels do not judge count as not relevant), and maps any score to a probability:

- ``platt`` (Platt scaling): ``p = 1 / (1 + exp(-(slope * score + intercept)))``, a logistic
  regression on the score (scikit-learn's ``LogisticRegression``) with Platt's smoothed targets,
  ``(positives + 1) / (positives + 2)`` for a relevant document and ``1 / (negatives + 2)`` for
  another, so a few examples never give probabilities of exactly 0 or 1;
- ``isotonic``: the non-decreasing step fit of scikit-learn's ``IsotonicRegression``, applied as its
  breakpoints linearly interpolated, clipped to the first and last outside them.

Both are stored as plain JSON (:meth:`Calibration.to_json`: the coefficients or the breakpoints, no
pickle), and applied with numpy alone: scikit-learn is needed to fit, not to apply. Without a
calibration, :func:`sigmoid` of the raw score is the documented fallback (a probability, not a
calibrated one).

Calibration is measured by the expected calibration error (:func:`expected_calibration_error`) over
equal-width bins of the predicted probability: ``bins`` bins ``[i / bins, (i + 1) / bins)``, the last
one closed at 1; ``ECE = sum over bins of (documents in the bin / all documents) * |mean predicted
probability - fraction relevant|``, empty bins counting nothing. :func:`reliability_table` lists the
bins. :func:`threshold_precision` is the fraction relevant among the documents scored at or above
:data:`RELEVANT_AT`: a calibrated threshold means the same on the validation queries it was fitted on and
on others when this fraction is close on both. :func:`run_calibration` measures a run's ``relevance_score``
column over each query's top :data:`CALIBRATION_DEPTH` documents (what a reranker returns), and
:func:`calibration_tables` every such run of an evaluation, as ``distill evaluate`` reports them.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np
import polars as pl

from distill.core.errors import ConfigError
from distill.core.schema import DOCID, QID, RELEVANCE, cut
from distill.evaluation.significance import RANKER

PLATT, ISOTONIC = "platt", "isotonic"
METHODS = (PLATT, ISOTONIC)
RELEVANCE_SCORE = "relevance_score"  # a run's column of calibrated probabilities of relevance
CALIBRATION_DEPTH = 10  # documents per query over which evaluate measures calibration
ECE = f"ECE@{CALIBRATION_DEPTH}"  # the evaluation summary's column
RELEVANT_AT = 0.5  # a relevance_score at or above it reads as "relevant" (a user's threshold)
PRECISION_AT = f"precision@{RELEVANT_AT}"  # summary column: the fraction relevant among those documents
DEFAULT_BINS = 10
_RELIABILITY_SCHEMA = {"bin": pl.Int32, "lower": pl.Float64, "upper": pl.Float64, "documents": pl.Int64,
                       "predicted": pl.Float64, "observed": pl.Float64}


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function, computed without overflow for large ``|x|``."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@dataclass(frozen=True)
class Calibration(ABC):
    """A fitted map from raw scores to probabilities of relevance (see the module docstring): a
    :class:`PlattCalibration` or an :class:`IsotonicCalibration`. ``documents`` and ``relevant``: how
    many (score, relevant) pairs it was fitted on, and how many were relevant."""

    documents: int
    relevant: int
    method: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for name in ("documents", "relevant"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")

    @abstractmethod
    def __call__(self, scores: np.ndarray) -> np.ndarray:
        """The probability of relevance of each score, in [0, 1]."""

    def to_json(self) -> dict[str, Any]:
        """``method``, the fitted parameters by name (numbers, or lists of breakpoints) and the counts."""
        params = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("documents", "relevant")}
        return {"method": self.method, **{k: list(v) if isinstance(v, tuple) else v for k, v in params.items()},
                "documents": self.documents, "relevant": self.relevant}

    @staticmethod
    def from_json(body: Any, field: str = "calibration") -> Calibration:
        """The calibration :meth:`to_json` wrote; a malformed one is a :class:`ConfigError` at ``field``."""
        kinds = {PLATT: PlattCalibration, ISOTONIC: IsotonicCalibration}
        kind = kinds.get(body.get("method")) if isinstance(body, dict) else None
        if kind is None:
            raise ConfigError(f"expected an object with a method in {list(METHODS)}, got {body!r}", field=field)
        try:
            return kind(**{k: v for k, v in body.items() if k != "method"})
        except (TypeError, ValueError) as err:
            raise ConfigError(f"malformed {kind.method} calibration ({err}): {body!r}", field=field) from None


@dataclass(frozen=True)
class PlattCalibration(Calibration):
    """``p = sigmoid(slope * score + intercept)``."""

    slope: float
    intercept: float
    method: ClassVar[str] = PLATT

    def __post_init__(self) -> None:
        super().__post_init__()
        if not all(_is_number(v) for v in (self.slope, self.intercept)):
            raise ValueError("slope and intercept must be finite numbers")
        object.__setattr__(self, "slope", float(self.slope))
        object.__setattr__(self, "intercept", float(self.intercept))

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        return sigmoid(self.slope * np.asarray(scores, dtype=np.float64) + self.intercept)


@dataclass(frozen=True)
class IsotonicCalibration(Calibration):
    """A non-decreasing map through the breakpoints ``(x, y)``, linear between them, flat outside."""

    x: tuple[float, ...]
    y: tuple[float, ...]
    method: ClassVar[str] = ISOTONIC

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.x, (list, tuple)) or not isinstance(self.y, (list, tuple)):
            raise ValueError("x and y must be lists of numbers")
        x, y = tuple(map(float, self.x)), tuple(map(float, self.y))
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y)
        if not x or len(x) != len(y) or not all(map(_is_number, x + y)):
            raise ValueError("x and y must be equally long, non-empty lists of finite numbers")
        if np.any(np.diff(x) <= 0) or np.any(np.diff(y) < 0) or min(y) < 0 or max(y) > 1:
            raise ValueError("x must increase and y must not decrease, within [0, 1]")

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(scores, dtype=np.float64), self.x, self.y)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def fit_calibration(scores: np.ndarray, relevant: np.ndarray, method: str = PLATT) -> Calibration:
    """Fit ``method`` (platt or isotonic) on raw ``scores`` and their 0/1 ``relevant`` labels."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(relevant, dtype=bool)
    if method not in METHODS:
        raise ConfigError(f"unknown calibration {method!r}; known: {list(METHODS)}", field="calibration")
    if scores.ndim != 1 or scores.shape != labels.shape or not scores.size or not np.isfinite(scores).all():
        raise ConfigError("a calibration needs one finite score per label, and at least one", field="calibration")
    kind, fit = (PlattCalibration, _fit_platt) if method == PLATT else (IsotonicCalibration, _fit_isotonic)
    return kind(int(scores.size), int(labels.sum()), **fit(scores, labels))


def _fit_platt(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Platt scaling: each document once as relevant and once as not, weighted by its smoothed target
    (a logistic regression's way to take soft labels), on standardised scores folded back after;
    the penalty is negligible (C = 1e6), there only to keep a separable set finite."""
    from sklearn.linear_model import LogisticRegression

    positives = labels.sum()
    target = np.where(labels, (positives + 1.0) / (positives + 2.0), 1.0 / (labels.size - positives + 2.0))
    centre, spread = scores.mean(), scores.std()
    spread = spread if spread > 0 else 1.0
    x = ((scores - centre) / spread)[:, None]
    model = LogisticRegression(C=1e6, max_iter=1000)
    model.fit(np.vstack([x, x]), np.r_[np.ones(len(x)), np.zeros(len(x))], sample_weight=np.r_[target, 1 - target])
    slope = float(model.coef_[0, 0]) / spread
    return {"slope": slope, "intercept": float(model.intercept_[0]) - slope * centre}


def _fit_isotonic(scores: np.ndarray, labels: np.ndarray) -> dict[str, tuple[float, ...]]:
    from sklearn.isotonic import IsotonicRegression

    model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    model.fit(scores, labels.astype(np.float64))
    return {"x": tuple(map(float, model.X_thresholds_)), "y": tuple(map(float, model.y_thresholds_))}


def reliability_table(probabilities: np.ndarray, relevant: np.ndarray, bins: int = DEFAULT_BINS) -> pl.DataFrame:
    """Per equal-width bin of the predicted probability (see the module docstring): ``bin, lower, upper,
    documents``, the mean predicted probability (``predicted``) and the fraction relevant (``observed``);
    empty bins are left out."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 0.0, 1.0)
    labels = np.asarray(relevant, dtype=np.float64)
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    counts = np.bincount(index, minlength=bins)
    used = np.flatnonzero(counts)
    predicted = np.bincount(index, weights=p, minlength=bins)[used] / counts[used]
    observed = np.bincount(index, weights=labels, minlength=bins)[used] / counts[used]
    return pl.DataFrame({"bin": used, "lower": used / bins, "upper": (used + 1) / bins, "documents": counts[used],
                         "predicted": predicted, "observed": observed}, schema=_RELIABILITY_SCHEMA)


def expected_calibration_error(probabilities: np.ndarray, relevant: np.ndarray, bins: int = DEFAULT_BINS) -> float:
    """The expected calibration error over ``bins`` equal-width bins (see the module docstring); NaN
    without documents."""
    table = reliability_table(probabilities, relevant, bins)
    total = table["documents"].sum()
    if not total:
        return math.nan
    gap = (table["predicted"] - table["observed"]).abs()
    return float((table["documents"] * gap).sum() / total)


def threshold_precision(probabilities: np.ndarray, relevant: np.ndarray, threshold: float = RELEVANT_AT) -> float:
    """The fraction relevant among the documents whose probability is at least ``threshold``; NaN when
    there are none."""
    chosen = np.asarray(probabilities, dtype=np.float64) >= threshold
    return float(np.asarray(relevant, dtype=np.float64)[chosen].mean()) if chosen.any() else math.nan


def run_calibration(qrels: pl.DataFrame, run: pl.DataFrame, depth: int = CALIBRATION_DEPTH,
                    bins: int = DEFAULT_BINS) -> tuple[float, float, pl.DataFrame]:
    """The ECE, :func:`threshold_precision` and reliability table of a run's :data:`RELEVANCE_SCORE` over
    each query's top ``depth`` documents (by score), for the queries the qrels judge."""
    top = cut(run, depth).join(qrels.select(QID).unique(), on=QID, how="semi")
    judged = top.join(qrels.select(QID, DOCID, RELEVANCE), on=[QID, DOCID], how="left", maintain_order="left")
    labels = (judged[RELEVANCE].fill_null(0) > 0).to_numpy()
    probabilities = judged[RELEVANCE_SCORE].cast(pl.Float64).to_numpy()
    return (expected_calibration_error(probabilities, labels, bins), threshold_precision(probabilities, labels),
            reliability_table(probabilities, labels, bins))


def calibration_tables(qrels: pl.DataFrame,
                       runs: Mapping[str, pl.DataFrame]) -> tuple[pl.DataFrame, pl.DataFrame] | None:
    """For the runs that have a :data:`RELEVANCE_SCORE` column (a calibrated cascade's): ``ranker,``
    :data:`ECE`, :data:`PRECISION_AT` and their reliability tables (``ranker, bin, ...``) over each query's top
    :data:`CALIBRATION_DEPTH`; None when no run has one."""
    measured = {name: run_calibration(qrels, run) for name, run in runs.items() if RELEVANCE_SCORE in run.columns}
    if not measured:
        return None
    errors = pl.DataFrame({RANKER: list(measured), ECE: [ece for ece, _, _ in measured.values()],
                           PRECISION_AT: [precision for _, precision, _ in measured.values()]},
                          schema={RANKER: pl.String, ECE: pl.Float64, PRECISION_AT: pl.Float64})
    tables = pl.concat([table.select(pl.lit(name).alias(RANKER), pl.all()) for name, (_, _, table) in measured.items()])
    return errors, tables

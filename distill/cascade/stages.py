"""The parts a cascade is built from: its stages (a ranker and its cutoff), what a stage is
expected to cost per query, and the printed form of a chain of them.

:mod:`distill.cascade.model` chains stages into a :class:`~distill.cascade.model.Cascade`; its
module docstring says how ``%`` and ``>>`` read.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from distill.core.errors import ConfigError
from distill.evaluation.calibration import Calibration
from distill.rankers.base import Ranker

if TYPE_CHECKING:
    from distill.cascade.model import Cascade

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclass(frozen=True)
class StageCost:
    """Expected time a stage takes for one query: a fixed part plus a part per scored pair."""

    per_query_ms: float = 0.0
    per_pair_ms: float = 0.0

    def __post_init__(self) -> None:
        for name in ("per_query_ms", "per_pair_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"a stage cost must be a finite number >= 0, got {value!r}", field=name)

    def expected_ms(self, pairs: float) -> float:
        return self.per_query_ms + self.per_pair_ms * pairs

    @classmethod
    def fit(cls, measured: Sequence[tuple[float, float]]) -> StageCost:
        """Least-squares line through ``(pairs per query, ms per query)`` measurements,
        clipped to non-negative parts (timing noise can tilt a line below zero)."""
        pairs, ms = (np.asarray(v, dtype=np.float64) for v in zip(*measured))
        if np.ptp(pairs) == 0:
            return cls(0.0, float(max(ms.mean(), 0.0) / max(pairs[0], 1.0)))
        slope = max(float(np.polyfit(pairs, ms, 1)[0]), 0.0)
        return cls(max(float((ms - slope * pairs).mean()), 0.0), slope)


def describe(names: Sequence[str], cutoffs: Sequence[int | None]) -> str:
    """The printed form of a cascade: ``bm25 % 100 >> ce % 20 >> teacher``."""
    return " >> ".join(name if cutoff is None else f"{name} % {cutoff}" for name, cutoff in zip(names, cutoffs))


def check_cutoff(k: Any) -> int:
    """``k`` as a cutoff (an integer >= 1), else a :class:`ConfigError`."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"a cutoff must be an integer >= 1, got {k!r}", field="cutoff")
    return int(k)


@dataclass(frozen=True)
class Stage:
    """One ranker of a cascade, its cutoff (None: keep all), the spec it was loaded from and the
    calibration of its scores.

    ``spec`` is what :func:`distill.rankers.loading.load_ranker` accepts (``bm25``, a model or cache
    folder, a run file); it is needed only to write the cascade as a spec. ``calibration`` maps the
    stage's scores to probabilities of relevance (:mod:`distill.cascade.relevance`; None: the
    uncalibrated rule).
    """

    name: str
    ranker: Ranker
    cutoff: int | None = None
    spec: str | None = None
    calibration: Calibration | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ConfigError(f"a stage name is letters, digits, '_', '.', '-'; got {self.name!r}", field="name")
        if self.cutoff is not None:
            check_cutoff(self.cutoff)

    def __mod__(self, k: int) -> Stage:
        """Keep this stage's top ``k`` (cutting twice keeps the smaller)."""
        k = check_cutoff(k)
        return replace(self, cutoff=k if self.cutoff is None else min(self.cutoff, k))

    def __rshift__(self, other: Stage | Cascade) -> Cascade:
        from distill.cascade.model import Cascade

        return Cascade((self,)) >> other

    def __str__(self) -> str:
        return describe([self.name], [self.cutoff])


def stage(name: str, ranker: Ranker, spec: str | None = None) -> Stage:
    """A stage without cutoff, to be cut with ``%`` and chained with ``>>``."""
    return Stage(name, ranker, None, spec)

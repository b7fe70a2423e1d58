"""Views of a dataset: which of its queries a step works on.

The rule that splits queries into training and validation lives here once, so the teacher,
every student and the cascade search hold out the same queries for the same seed, and a
dataset restricted to some of its queries is built the same way wherever one is needed.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable

import polars as pl

from distill.core.errors import ConfigError
from distill.core.schema import QID
from distill.data.beir import Dataset

log = logging.getLogger(__name__)


def holdout(ids: Iterable[str], fraction: float, seed: int) -> set[str]:
    """The queries held out for validation: a seeded random ``fraction`` of the distinct ``ids``
    (rounded, at least one when ``fraction > 0``, never all), independent of their order.

    The one holdout of distill: the teacher, every student and the cascade search draw their
    validation queries with it, so the same seed holds out the same queries everywhere.
    """
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"valid fraction must be in [0, 1), got {fraction}", field="valid_fraction")
    order = sorted(set(ids))
    random.Random(seed).shuffle(order)
    n_valid = min(max(round(len(order) * fraction), 1 if fraction > 0 else 0), len(order) - 1)
    if fraction > 0 and n_valid < 1:
        log.warning("too few queries (%d) to hold out %.0f%% for validation; training on all",
                    len(order), 100 * fraction)
    return set(order[:max(n_valid, 0)])


def restrict(dataset: Dataset, qids: Iterable[str]) -> Dataset:
    """``dataset`` restricted to the queries ``qids`` and their judgements (same corpus, name, split
    and path; queries in the dataset's order)."""
    keep = pl.DataFrame({QID: sorted(set(qids))}, schema={QID: pl.String})
    return Dataset(
        corpus=dataset.corpus, queries=dataset.queries.join(keep, on=QID, how="semi", maintain_order="left"),
        qrels=dataset.qrels.join(keep, on=QID, how="semi", maintain_order="left"), name=dataset.name,
        split=dataset.split, path=dataset.path,
    )

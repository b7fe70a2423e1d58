"""Distillation losses on tensors: ``loss(student [B, L], teacher [B, L], mask [B, L], labels=None)``.

``LOSSES`` maps the field's names to classes, family by family; each class says which student
matrix it takes (``signature``: ``"group"`` for ``[B, L]``, ``"in_batch"`` for ``[B, B*L]``, see
:mod:`distill.training.losses.base`). :func:`build_loss` turns a config (name plus hyperparameters)
into a loss, optionally mixed with a hard-label term, and :func:`describe_losses` feeds the
docs' loss table (``python -m distill.training.losses.describe`` writes docs/losses.md). Importing this
package imports torch.
"""

from __future__ import annotations

import importlib
import inspect
from typing import TYPE_CHECKING, Any

from distill.core.errors import ConfigError

if TYPE_CHECKING:
    from distill.training.losses.approximate import ApproxMRR, ApproxNDCG, ApproxRankMSE
    from distill.training.losses.base import DistillLoss, Mixture
    from distill.training.losses.in_batch import InBatchCE, ScoreBasedInBatchCE
    from distill.training.losses.listwise import (
        InfoNCE,
        KLDiv,
        LambdaLoss,
        ListMLE,
        ListNet,
        PearsonCorrelation,
        PListMLE,
    )
    from distill.training.losses.pairwise import ConstantMarginMSE, Hinge, MarginMSE, RankNet, SupervisedMarginMSE
    from distill.training.losses.pointwise import BCE, GradedCE, HardLabels, PointwiseMSE

#: The registry: each family's losses, in the order the docs list them, as ``name: "module:Class"``.
#: Plain strings, so the names (CLI help) are known without importing torch; the classes load
#: on first use, and each class's ``name`` must be its key here.
CATALOG: dict[str, dict[str, str]] = {
    "pointwise": {"MSE": "pointwise:PointwiseMSE", "BCE": "pointwise:BCE", "GradedCE": "pointwise:GradedCE"},
    "pairwise": {
        "MarginMSE": "pairwise:MarginMSE", "RankNet": "pairwise:RankNet", "Hinge": "pairwise:Hinge",
        "ConstantMarginMSE": "pairwise:ConstantMarginMSE", "SupervisedMarginMSE": "pairwise:SupervisedMarginMSE",
    },
    "listwise": {
        "KLDiv": "listwise:KLDiv", "ListNet": "listwise:ListNet", "LambdaLoss": "listwise:LambdaLoss",
        "ListMLE": "listwise:ListMLE", "PListMLE": "listwise:PListMLE", "InfoNCE": "listwise:InfoNCE",
        "PearsonCorrelation": "listwise:PearsonCorrelation",
    },
    "approximate": {
        "ApproxNDCG": "approximate:ApproxNDCG", "ApproxMRR": "approximate:ApproxMRR",
        "ApproxRankMSE": "approximate:ApproxRankMSE",
    },
    "in-batch": {"InBatchCE": "in_batch:InBatchCE", "ScoreBasedInBatchCE": "in_batch:ScoreBasedInBatchCE"},
}
#: Every registered loss name, without importing torch.
LOSS_NAMES: tuple[str, ...] = tuple(name for family in CATALOG.values() for name in family)
#: Classes importable from this package besides the registered ones.
_EXTRA = {"HardLabels": "pointwise:HardLabels", "DistillLoss": "base:DistillLoss", "Mixture": "base:Mixture",
          "GROUP": "base:GROUP", "IN_BATCH": "base:IN_BATCH"}
_WHERE = {name: where for family in CATALOG.values() for name, where in family.items()}


def _load(where: str) -> Any:
    module, attribute = where.split(":")
    return getattr(importlib.import_module(f"distill.training.losses.{module}"), attribute)


def _classes() -> dict[str, Any]:
    """Registry name -> class, checked against each class's own ``name``."""
    classes = {name: _load(where) for name, where in _WHERE.items()}
    for name, cls in classes.items():
        if cls.name != name:
            raise RuntimeError(f"CATALOG names {cls.__name__} '{name}' but its name is '{cls.name}'")
    return classes


def __getattr__(attribute: str) -> Any:
    """``LOSSES``, ``FAMILIES`` and the loss classes, imported (with torch) on first access."""
    if attribute == "LOSSES":
        value: Any = _classes()
    elif attribute == "FAMILIES":
        value = {family: tuple(_load(w) for w in names.values()) for family, names in CATALOG.items()}
    elif attribute in _EXTRA:
        value = _load(_EXTRA[attribute])
    else:
        cls = next((c for n, c in _classes().items() if c.__name__ == attribute), None)
        if cls is None:
            raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")
        value = cls
    globals()[attribute] = value
    return value


def build_loss(
    name: str, *, hard_label_weight: float = 0.0, hard_label_kind: str = "bce", **params: Any
) -> DistillLoss:
    """The registered loss ``name`` (any case) built with ``params``; with
    ``hard_label_weight > 0`` it becomes ``Mixture([(loss, 1), (HardLabels(kind), weight)])``."""
    key = {key.lower(): key for key in LOSS_NAMES}.get(name.lower())
    if key is None:
        raise ConfigError(f"unknown loss '{name}'; choose one of: {', '.join(LOSS_NAMES)}", field="loss")
    cls = _load(_WHERE[key])
    accepted = list(_parameters(cls))
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(
            f"{cls.name} does not take {', '.join(unknown)}; "
            f"its parameters are: {', '.join(accepted) or '(none)'}",
            field="loss",
        )
    loss = cls(**params)
    if hard_label_weight < 0:
        raise ConfigError(
            f"hard_label_weight must be >= 0, got {hard_label_weight}", field="hard_label_weight"
        )
    if hard_label_weight == 0:
        return loss
    mixture, hard_labels = _load(_EXTRA["Mixture"]), _load(_EXTRA["HardLabels"])
    return mixture([(loss, 1.0), (hard_labels(kind=hard_label_kind), hard_label_weight)])


def _parameters(cls: type[DistillLoss]) -> dict[str, inspect.Parameter]:
    """The constructor's named parameters (none for a loss without hyperparameters)."""
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {n: p for n, p in inspect.signature(cls).parameters.items() if p.kind in named}


def describe_losses() -> list[dict[str, str]]:
    """One row per selectable loss (the registry, then the hard-label term): name, family,
    signature, parameters with defaults, formula, when to use it. docs/losses.md is generated
    from these rows."""
    hard_labels = _load(_EXTRA["HardLabels"])
    rows = [(family, _load(where)) for family, names in CATALOG.items() for where in names.values()]
    return [
        {
            "name": cls.name,
            "family": family,
            "signature": cls.signature,
            "parameters": ", ".join(f"{n}={p.default!r}" for n, p in _parameters(cls).items()),
            "formula": cls.formula,
            "when_to_use": cls.when_to_use,
        }
        for family, cls in [*rows, ("hard-label term", hard_labels)]
    ]


__all__ = [
    "BCE", "CATALOG", "FAMILIES", "GROUP", "IN_BATCH", "LOSSES", "LOSS_NAMES",
    "ApproxMRR", "ApproxNDCG", "ApproxRankMSE",
    "ConstantMarginMSE", "DistillLoss", "GradedCE", "HardLabels", "Hinge", "InBatchCE", "InfoNCE", "KLDiv",
    "LambdaLoss", "ListMLE", "ListNet", "MarginMSE", "Mixture", "PListMLE", "PearsonCorrelation", "PointwiseMSE",
    "RankNet",
    "ScoreBasedInBatchCE", "SupervisedMarginMSE", "build_loss", "describe_losses",
]

"""Distillation losses on tensors: ``loss(student [B, L], teacher [B, L], mask [B, L], labels=None)``.

``LOSSES`` maps the field's names to classes; :func:`build_loss` turns a config (name plus
hyperparameters) into a loss, optionally mixed with a hard-label term, and
:func:`describe_losses` feeds the README's loss table. Importing this package imports torch.
"""

from __future__ import annotations

import inspect
from typing import Any

from distill.errors import ConfigError
from students.losses.base import DistillLoss, Mixture
from students.losses.listwise import KLDiv, LambdaLoss, ListNet
from students.losses.pairwise import MarginMSE, RankNet
from students.losses.pointwise import HardLabels, PointwiseMSE

LOSSES: dict[str, type[DistillLoss]] = {
    cls.name: cls for cls in (MarginMSE, KLDiv, ListNet, RankNet, LambdaLoss, PointwiseMSE)
}


def build_loss(
    name: str, *, hard_label_weight: float = 0.0, hard_label_kind: str = "bce", **params: Any
) -> DistillLoss:
    """The registered loss ``name`` (any case) built with ``params``; with
    ``hard_label_weight > 0`` it becomes ``Mixture([(loss, 1), (HardLabels(kind), weight)])``."""
    cls = {key.lower(): cls for key, cls in LOSSES.items()}.get(name.lower())
    if cls is None:
        raise ConfigError(f"unknown loss '{name}'; choose one of: {', '.join(LOSSES)}", field="loss")
    accepted = list(inspect.signature(cls).parameters)
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
    return Mixture([(loss, 1.0), (HardLabels(kind=hard_label_kind), hard_label_weight)])


def describe_losses() -> list[dict[str, str]]:
    """One row per selectable loss (the registry, then the hard-label term): name, formula,
    when to use it. The README's loss table is generated from these rows."""
    return [
        {"name": cls.name, "formula": cls.formula, "when_to_use": cls.when_to_use}
        for cls in (*LOSSES.values(), HardLabels)
    ]


__all__ = [
    "LOSSES", "DistillLoss", "HardLabels", "KLDiv", "LambdaLoss", "ListNet", "MarginMSE", "Mixture",
    "PointwiseMSE", "RankNet", "build_loss", "describe_losses",
]

"""Hard-label objectives on qrels, shared by the teacher and the students.

``train-teacher`` learns from the qrels alone, and a student may mix the same term into its
distillation loss (``distill.training.losses.HardLabels``); the math lives here, below both, with
the masked softmax helpers every group loss uses. Scores are ``[B, L]`` groups with a
``mask`` of real documents (padding False) and ``labels`` the qrels grades.

Kinds: ``bce``, binary cross-entropy with logits on ``labels > 0`` per document (monoBERT);
``listwise_ce``, cross-entropy between ``y / sum(y)`` and the softmax over the group
(localized contrastive estimation with one positive); ``listnet``, the same against
``softmax(y)``, the target of sentence-transformers' ``ListNetLoss`` on labels, which asks
for a finite margin (label smoothing). Import lazily: this module imports torch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.core.errors import ConfigError

HARD_LABEL_KINDS = ("bce", "listwise_ce", "listnet")


def masked_log_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Log-softmax over the valid entries of each row; masked entries come back as 0.

    Masked entries are filled with -inf before the softmax (probability exactly 0) and with
    0 afterwards, so products with a zero probability stay 0 instead of ``0 * -inf = nan``.
    Rows without any valid entry return all zeros.
    """
    return torch.log_softmax(_fill_for_softmax(scores, mask), dim=-1).masked_fill(~mask, 0.0)


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the valid entries of each row; masked entries (and empty rows) are 0."""
    return torch.softmax(_fill_for_softmax(scores, mask), dim=-1).masked_fill(~mask, 0.0)


def _fill_for_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    # -inf on padding; an all-padding row is set to zeros so its softmax stays finite.
    filled = scores.masked_fill(~mask, float("-inf"))
    return filled.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)


def mean_over_rows(row_loss: Tensor, row_valid: Tensor) -> Tensor:
    """Mean of ``row_loss`` over the rows marked valid (0 with a gradient when none is)."""
    total = torch.where(row_valid, row_loss, torch.zeros_like(row_loss)).sum()
    return total / row_valid.sum().clamp(min=1)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean over the valid elements of each row (all dims after the first), then over rows
    that have at least one valid element."""
    dims = tuple(range(1, values.dim()))
    count = mask.sum(dim=dims)
    row_sum = torch.where(mask, values, torch.zeros_like(values)).sum(dim=dims)
    return mean_over_rows(row_sum / count.clamp(min=1), count > 0)


def check_hard_label_kind(kind: str) -> str:
    if kind not in HARD_LABEL_KINDS:
        raise ConfigError(f"unknown hard-label kind '{kind}'; choose one of: {', '.join(HARD_LABEL_KINDS)}",
                          field="kind")
    return kind


def hard_label_loss(kind: str, student: Tensor, mask: Tensor, labels: Tensor) -> Tensor:
    """The ``kind`` objective (see the module docstring) of ``student[B, L]`` scores on qrels
    ``labels[B, L]``; lists without a relevant document (or a single one) are skipped by the
    listwise kinds."""
    grades = labels.masked_fill(~mask, 0.0).clamp(min=0.0)
    if kind == "bce":
        logits = student.masked_fill(~mask, 0.0)
        targets = (grades > 0).to(logits.dtype)
        return masked_mean(F.binary_cross_entropy_with_logits(logits, targets, reduction="none"), mask)
    total = grades.sum(dim=-1, keepdim=True)
    target = masked_softmax(grades, mask) if kind == "listnet" else grades / total.clamp(min=1e-12)
    row_loss = -(target * masked_log_softmax(student, mask)).sum(dim=-1)
    return mean_over_rows(row_loss, (total.squeeze(-1) > 0) & (mask.sum(dim=-1) >= 2))


class HardLabelObjective(nn.Module):
    """:func:`hard_label_loss` as the loss a :class:`distill.training.trainer.CrossEncoderGroupLoss`
    applies (``train-teacher``'s objectives); its config reads as the students' ``HardLabels``."""

    name = "HardLabels"

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = check_hard_label_kind(kind)

    def forward(self, student: Tensor, teacher: Tensor, mask: Tensor, labels: Tensor | None = None) -> Tensor:
        if labels is None:
            raise ConfigError(f"the {self.kind} objective needs qrels labels for every candidate")
        return hard_label_loss(self.kind, student.float(), mask, labels.detach().float())

    def get_config_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind}

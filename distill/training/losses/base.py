"""The contract every distillation loss follows, and the masking helpers they share.

A loss sees only tensors: ``student`` and ``teacher`` scores of shape ``[B, L]`` (row b is
one query's candidate group, column j one document), a boolean ``mask`` marking real
(non-padding) entries and, optionally, qrels ``labels``. Groups sampled as one positive
plus negatives put the positive in column 0. Models, tokenizers and padding logic stay in
the trainers, so one loss serves a cross-encoder and a bi-encoder alike.

Each loss declares its ``signature``: :data:`GROUP` losses take ``student [B, L]``;
:data:`IN_BATCH` losses take ``student [B, B*L]``, every query scored against every document
of the batch (column ``c*L + j`` is document j of group c), while ``teacher``, ``mask`` and
``labels`` stay ``[B, L]``. Only a bi-encoder gets that matrix cheaply (one matrix product of
the embeddings it computes anyway), so the trainers refuse in-batch losses elsewhere.

Masked entries have no effect on the value or on gradients, whatever they hold: every
helper here replaces them (``masked_fill`` / ``torch.where``) *before* any arithmetic, so
neither ``inf - inf`` nor ``0 * inf`` can appear. Every loss averages within a query
first and then over queries, so each query counts the same however many candidates it has.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from distill.core.errors import ConfigError
from distill.training.objectives import masked_log_softmax as masked_log_softmax  # re-exported for the losses
from distill.training.objectives import masked_mean as masked_mean
from distill.training.objectives import masked_softmax as masked_softmax
from distill.training.objectives import mean_over_rows as mean_over_rows

#: ``signature`` values: which student score matrix a loss takes (see the module docstring).
GROUP, IN_BATCH = "group", "in_batch"

#: Lightning IR, whose definitions several losses here follow (and say where they differ).
LIGHTNING_IR_CITATION = """
@inproceedings{schlatt2025lightning,
  title={Lightning IR: Straightforward Fine-tuning and Inference of Transformer-based
         Language Models for Information Retrieval},
  author={Schlatt, Ferdinand and Fr{\\"o}be, Maik and Hagen, Matthias},
  booktitle={Proceedings of the Eighteenth ACM International Conference on Web Search and Data Mining},
  pages={1088--1091},
  year={2025}
}
"""


def pair_differences(scores: Tensor, mask: Tensor) -> Tensor:
    """``[B, L, L]`` differences ``scores[b, i] - scores[b, j]``, with padding zeroed first."""
    clean = scores.masked_fill(~mask, 0.0)
    return clean[:, :, None] - clean[:, None, :]


def pair_mask(mask: Tensor) -> Tensor:
    """``[B, L, L]``: True where both i and j are valid and i != j."""
    eye = torch.eye(mask.shape[-1], dtype=torch.bool, device=mask.device)
    return mask[:, :, None] & mask[:, None, :] & ~eye


def check_positive(name: str, field: str, value: float) -> float:
    """``value`` as a float, or a :class:`ConfigError` naming the loss and field when it is <= 0."""
    if value <= 0:
        raise ConfigError(f"{name} {field} must be > 0, got {value}", field=field)
    return float(value)


def check_non_negative(name: str, field: str, value: float) -> float:
    """``value`` as a float, or a :class:`ConfigError` naming the loss and field when it is < 0."""
    if value < 0:
        raise ConfigError(f"{name} {field} must be >= 0, got {value}", field=field)
    return float(value)


def require_labels(labels: Tensor | None, who: str, hint: str = "") -> Tensor:
    """``labels``, or a :class:`ConfigError` saying that ``who`` (a loss that trains on qrels) got a
    batch without them; ``hint`` tells the user what to do about it."""
    if labels is None:
        raise ConfigError(f"{who} needs qrels labels for every candidate, but the batch has none{hint}")
    return labels


def has_negatives(mask: Tensor) -> Tensor:
    """Rows with at least two valid entries: a softmax over one document carries no signal."""
    return mask.sum(dim=-1) >= 2


def ordered_pairs(scores: Tensor, mask: Tensor, min_gap: float = 0.0) -> Tensor:
    """``[B, L, L]``: valid pairs (i, j) that ``scores`` order, ``scores_i - scores_j > min_gap``."""
    return pair_mask(mask) & (pair_differences(scores, mask) > min_gap)


def soft_cross_entropy(target: Tensor, student_logits: Tensor, mask: Tensor) -> Tensor:
    """Per row ``-sum_j target_j log softmax(student_logits)_j`` over the valid entries."""
    return -(target * masked_log_softmax(student_logits, mask)).sum(dim=-1)


def descending_order(scores: Tensor, mask: Tensor) -> Tensor:
    """Column indices sorting each row best first, padding last; ties keep column order."""
    return scores.masked_fill(~mask, float("-inf")).argsort(dim=-1, descending=True, stable=True)


def top_one(scores: Tensor, mask: Tensor) -> Tensor:
    """``[B, 1]``: the column of each row's best valid entry (ties: the first), ready for ``gather``;
    the one relevant document of the losses that trust only the teacher's top-1."""
    return descending_order(scores, mask)[:, :1]


def descending_ranks(scores: Tensor, mask: Tensor) -> Tensor:
    """1-based rank of each entry within its row's valid entries (padding ranks after them)."""
    return descending_order(scores, mask).argsort(dim=-1).to(scores.dtype) + 1


def soft_ranks(scores: Tensor, mask: Tensor, temperature: float) -> Tensor:
    """Differentiable ranks ``1 + sum_{k valid, k != j} sigmoid((s_k - s_j) / T)`` (Qin et al.'s
    ApproxRank, as Lightning IR's ``get_approx_ranks``); 0 on padding."""
    diff = pair_differences(scores, mask).transpose(1, 2) / temperature  # [b, j, k] = s_k - s_j
    beaten = torch.where(pair_mask(mask), torch.sigmoid(diff), torch.zeros_like(diff))
    return (1.0 + beaten.sum(dim=-1)).masked_fill(~mask, 0.0)


def inverse_log_discount(ranks: Tensor) -> Tensor:
    """DCG's position discount ``1 / log2(1 + rank)`` for 1-based (possibly smooth) ranks."""
    return 1.0 / torch.log2(1.0 + ranks)


def ideal_dcg(gains: Tensor, k: int | None = None) -> Tensor:
    """Per row, the DCG(@k) of ``gains`` in their best order: the normaliser of NDCG (padding's
    gains must be 0, so that they sort last and add nothing)."""
    length = gains.shape[-1]
    positions = torch.arange(1, length + 1, device=gains.device, dtype=gains.dtype)
    return (gains.sort(dim=-1, descending=True).values * inverse_log_discount(positions))[:, :k].sum(dim=-1)


def group_scores(student: Tensor, length: int) -> Tensor:
    """The ``[B, L]`` scores of each query against its own group, from an in-batch ``[B, B*L]``
    matrix (block b of row b)."""
    batch = student.shape[0]
    rows = torch.arange(batch, device=student.device)
    return student.view(batch, batch, length)[rows, rows]


class DistillLoss(nn.Module):
    """Base class: validates inputs, computes in at least float32, detaches the teacher.

    Subclasses implement :meth:`compute` and declare ``name`` (the field's name, also the
    registry key), ``citation`` (BibTeX), ``formula`` and ``when_to_use`` (for the README
    table), ``config_fields`` (constructor arguments written into manifests) and
    ``requires_negatives`` (whether a group of one document makes the loss meaningless) and
    ``signature`` (:data:`GROUP` or :data:`IN_BATCH`, the student matrix it takes).
    """

    name: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    formula: ClassVar[str] = ""
    when_to_use: ClassVar[str] = ""
    config_fields: ClassVar[tuple[str, ...]] = ()
    requires_negatives: bool = False
    signature: ClassVar[str] = GROUP

    def forward(
        self, student: Tensor, teacher: Tensor, mask: Tensor, labels: Tensor | None = None
    ) -> Tensor:
        """Scalar loss for a batch of candidate groups (see the module docstring)."""
        _check_inputs(student, teacher, mask, labels, self.signature)
        dtype = torch.promote_types(student.dtype, torch.float32)
        return self.compute(
            student.to(dtype),
            teacher.detach().to(dtype),
            mask,
            None if labels is None else labels.detach().to(dtype),
        )

    def compute(self, student: Tensor, teacher: Tensor, mask: Tensor, labels: Tensor | None) -> Tensor:
        """The loss proper, on validated float tensors."""
        raise NotImplementedError

    def check_group_size(self, group_size: int) -> None:
        """Refuse a training config whose groups are too small for this loss."""
        if self.requires_negatives and group_size < 2:
            raise ConfigError(
                f"{self.name} needs at least one negative per group (group size >= 2), "
                f"got group size {group_size}; sample negatives or use a pointwise loss (MSE)"
            )

    def get_config_dict(self) -> dict[str, Any]:
        """Name and hyperparameters, written into the manifest of every trained student."""
        return {"name": self.name, **{field: getattr(self, field) for field in self.config_fields}}

    def extra_repr(self) -> str:
        return ", ".join(f"{field}={getattr(self, field)!r}" for field in self.config_fields)


def _check_inputs(
    student: Tensor, teacher: Tensor, mask: Tensor, labels: Tensor | None, signature: str
) -> None:
    # Wrong shapes or dtypes here are trainer bugs, not user input, hence ValueError.
    if student.dim() != 2 or teacher.dim() != 2:
        raise ValueError(f"scores must be 2-D, got student {tuple(student.shape)}, teacher {tuple(teacher.shape)}")
    batch, length = teacher.shape
    expected = (batch, batch * length) if signature == IN_BATCH else (batch, length)
    if tuple(student.shape) != expected:
        raise ValueError(
            f"{signature} loss: student shape {tuple(student.shape)} should be {expected} for teacher "
            f"shape {tuple(teacher.shape)}"
        )
    for what, tensor in (("mask", mask), ("labels", labels)):
        if tensor is not None and tensor.shape != teacher.shape:
            raise ValueError(
                f"{what} shape {tuple(tensor.shape)} differs from teacher shape {tuple(teacher.shape)}"
            )
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
    if not student.is_floating_point():
        raise ValueError(f"student scores must be floating point, got {student.dtype}")


class Mixture(DistillLoss):
    """Weighted sum of losses, e.g. a distillation loss plus a hard-label term.

    :meth:`parts` returns each component's unweighted value by name, so a trainer can log
    them separately (as Lightning IR does with its ``loss_functions``). With an in-batch
    component the mixture takes the in-batch matrix, and group components see its diagonal
    blocks (:func:`group_scores`).
    """

    name = "Mixture"

    def __init__(self, components: Sequence[tuple[DistillLoss, float]]) -> None:
        super().__init__()
        if not components:
            raise ConfigError("a loss mixture needs at least one (loss, weight) component")
        for loss, weight in components:
            if weight < 0:
                raise ConfigError(f"weight of {loss.name} must be >= 0, got {weight}")
        self.losses = nn.ModuleList(loss for loss, _ in components)
        self.weights = tuple(float(weight) for _, weight in components)
        self.requires_negatives = any(loss.requires_negatives for loss in self.losses)
        self.signature = IN_BATCH if any(loss.signature == IN_BATCH for loss in self.losses) else GROUP

    def parts(
        self, student: Tensor, teacher: Tensor, mask: Tensor, labels: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Unweighted value of each component, keyed by its name (``#2``... on repeats)."""
        out: dict[str, Tensor] = {}
        for loss in self.losses:
            key, n = loss.name, 1
            while key in out:
                n += 1
                key = f"{loss.name}#{n}"
            scores = student
            if self.signature == IN_BATCH and loss.signature == GROUP:
                scores = group_scores(student, teacher.shape[-1])
            out[key] = loss(scores, teacher, mask, labels)
        return out

    def compute(self, student: Tensor, teacher: Tensor, mask: Tensor, labels: Tensor | None) -> Tensor:
        values = self.parts(student, teacher, mask, labels).values()
        return sum(w * v for w, v in zip(self.weights, values, strict=True))

    def check_group_size(self, group_size: int) -> None:
        for loss in self.losses:
            loss.check_group_size(group_size)

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "components": [
                {"weight": w, **loss.get_config_dict()}
                for loss, w in zip(self.losses, self.weights, strict=True)
            ],
        }

    def extra_repr(self) -> str:
        return f"weights={self.weights}"

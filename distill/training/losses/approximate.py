"""Approximate-metric losses: a ranking metric made differentiable by smooth ranks.

The rank of document j becomes ``1 + sum_{k != j} sigmoid((s_k - s_j) / T)`` over the
query's valid candidates (Qin et al.'s ApproxRank, Lightning IR's ``get_approx_ranks``); the
smaller ``temperature``, the closer to the true ranks and the steeper the gradients. The
targets come from the teacher: ApproxNDCG's gains are ``softmax(t / gain_temperature)``
(as LambdaLoss's, so a constant shift of the teacher changes nothing; Lightning IR uses
``2^target - 1`` on whatever targets the batch holds, which for raw teacher logits depends on
their offset), ApproxMRR's one relevant document is the teacher's top-1, and ApproxRankMSE
regresses the teacher's ranks. All depend on the student through score differences only.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import Tensor

from distill.core.errors import ConfigError
from distill.training.losses.base import (
    DistillLoss,
    check_positive,
    descending_ranks,
    has_negatives,
    ideal_dcg,
    inverse_log_discount,
    masked_mean,
    masked_softmax,
    mean_over_rows,
    soft_ranks,
    top_one,
)

QIN_CITATION = """
@article{qin2010general,
  title={A General Approximation Framework for Direct Optimization of Information Retrieval Measures},
  author={Qin, Tao and Liu, Tie-Yan and Li, Hang},
  journal={Information Retrieval},
  volume={13},
  number={4},
  pages={375--397},
  year={2010}
}
"""


class ApproxNDCG(DistillLoss):
    """``1 - ApproxNDCG`` of the student's smooth ranks, with the teacher's probabilities
    ``softmax(t / gain_temperature)`` as gains (see the module docstring); tends to 0 as the
    student separates the candidates in the teacher's order."""

    name = "ApproxNDCG"
    formula = (
        "1 - sum_j G_j / log2(1 + r_j) / IDCG, r_j = 1 + sum_k sigmoid((s_k - s_j) / T), "
        "G = softmax(t / T_g)"
    )
    when_to_use = (
        "Optimise nDCG itself, top-heavy like LambdaLoss but smooth; a small T approximates the "
        "ranks better but gives sparse gradients."
    )
    citation = QIN_CITATION
    requires_negatives = True
    config_fields: ClassVar[tuple[str, ...]] = ("temperature", "gain_temperature")

    def __init__(self, temperature: float = 1.0, gain_temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = check_positive(self.name, "temperature", temperature)
        self.gain_temperature = check_positive(self.name, "gain_temperature", gain_temperature)

    def compute(self, student: Tensor, teacher: Tensor, mask: Tensor, labels: Tensor | None) -> Tensor:
        gains = masked_softmax(teacher / self.gain_temperature, mask)
        ranks = soft_ranks(student, mask, self.temperature)
        dcg = torch.where(mask, gains * inverse_log_discount(ranks.clamp(min=1.0)), 0.0).sum(dim=-1)
        ndcg = dcg / ideal_dcg(gains).clamp(min=torch.finfo(gains.dtype).tiny)
        return mean_over_rows(1.0 - ndcg, has_negatives(mask))


class ApproxMRR(DistillLoss):
    """``1 - 1 / r_top``: the reciprocal smooth rank of the teacher's top-1 document (ties: the
    first), Lightning IR's ``ApproxMRR`` with the teacher's top-1 as the one relevant document."""

    name = "ApproxMRR"
    formula = "1 - 1 / r_top, r_j = 1 + sum_k sigmoid((s_k - s_j) / T), top = argmax_j t_j"
    when_to_use = (
        "One right answer per query (QA, known-item search): only the teacher's top-1 position "
        "matters, the rest of the list is free."
    )
    citation = QIN_CITATION
    requires_negatives = True
    config_fields: ClassVar[tuple[str, ...]] = ("temperature",)

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = check_positive(self.name, "temperature", temperature)

    def compute(self, student: Tensor, teacher: Tensor, mask: Tensor, labels: Tensor | None) -> Tensor:
        rank_of_top = soft_ranks(student, mask, self.temperature).gather(1, top_one(teacher, mask)).squeeze(1)
        return mean_over_rows(1.0 - 1.0 / rank_of_top.clamp(min=1.0), has_negatives(mask))


class ApproxRankMSE(DistillLoss):
    """Squared error between the student's smooth ranks and the teacher's ranks (1 = best, ties
    by column), optionally weighted by the teacher rank's ``1 / log2(1 + rank)`` or
    ``1 / rank`` so the head counts more (Rank-DistiLLM; Lightning IR's ``ApproxRankMSE``),
    averaged over a query's valid candidates. Tends to 0 as the student separates the
    candidates in the teacher's order."""

    name = "ApproxRankMSE"
    formula = (
        "mean_j w_j (r_j - rank_t(j))^2, r_j = 1 + sum_k sigmoid((s_k - s_j) / T), "
        "w = 1 | 1/log2(1+rank) | 1/rank"
    )
    when_to_use = (
        "Rank-based teachers (LLM rankings) or teachers whose score gaps are unreliable: the "
        "student learns positions, not margins."
    )
    citation = """
@inproceedings{schlatt2025rankdistillm,
  title={Rank-DistiLLM: Closing the Effectiveness Gap Between Cross-Encoders and LLMs for Passage Re-ranking},
  author={Schlatt, Ferdinand and Fr{\\"o}be, Maik and Scells, Harrisen and Zhuang, Shengyao and Koopman, Bevan
          and Zuccon, Guido and Stein, Benno and Potthast, Martin and Hagen, Matthias},
  booktitle={Advances in Information Retrieval (ECIR)},
  pages={323--334},
  year={2025}
}
"""
    requires_negatives = True
    config_fields: ClassVar[tuple[str, ...]] = ("temperature", "discount")
    DISCOUNTS: ClassVar[tuple[str | None, ...]] = (None, "log2", "reciprocal")

    def __init__(self, temperature: float = 1.0, discount: Literal["log2", "reciprocal"] | None = None) -> None:
        super().__init__()
        self.temperature = check_positive(self.name, "temperature", temperature)
        if discount not in self.DISCOUNTS:
            raise ConfigError(f"ApproxRankMSE discount must be log2, reciprocal or None, got {discount!r}",
                              field="discount")
        self.discount = discount

    def compute(self, student: Tensor, teacher: Tensor, mask: Tensor, labels: Tensor | None) -> Tensor:
        target = descending_ranks(teacher, mask)
        error = (soft_ranks(student, mask, self.temperature) - target) ** 2
        if self.discount == "log2":
            error = error * inverse_log_discount(target)
        elif self.discount == "reciprocal":
            error = error / target
        return masked_mean(error, mask & has_negatives(mask)[:, None])

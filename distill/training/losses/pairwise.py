"""Pairwise losses: the student learns score differences between documents of one query.

All ignore a constant shift of the student or teacher scores within a query, so the
student never has to match the teacher's absolute scale. They differ in which pairs count
and what each pair asks for:

- ``MarginMSE``: positive (column 0) against each negative, the teacher's margin;
- ``RankNet``, ``Hinge``, ``ConstantMarginMSE``: every pair the teacher orders (its gap above
  ``min_gap``), asking for a logistic win, a hinge win by ``margin``, or exactly ``margin``;
- ``SupervisedMarginMSE``: every pair the qrels order, asking for the label gap.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.training.losses.base import (
    LIGHTNING_IR_CITATION,
    DistillLoss,
    check_non_negative,
    check_positive,
    masked_mean,
    ordered_pairs,
    pair_differences,
    require_labels,
)


class MarginMSE(DistillLoss):
    """MSE between student and teacher margins of the positive (column 0) over each negative.

    With one negative this is Hofstätter et al.'s Margin-MSE; with several, each valid
    negative j >= 1 gives one margin and a query's margins are averaged.
    """

    name = "MarginMSE"
    formula = "mean_{j>=1} ((s_0 - s_j) - (t_0 - t_j))^2, column 0 the positive"
    when_to_use = (
        "The standard cross-architecture recipe for 1 positive + n negatives groups; robust to "
        "teacher and student living on different score scales."
    )
    citation = """
@misc{hofstaetter2020improving,
  title={Improving Efficient Neural Ranking Models with Cross-Architecture Knowledge Distillation},
  author={Hofst{\\"a}tter, Sebastian and Althammer, Sophia and Schr{\\"o}der, Michael
          and Sertkan, Mete and Hanbury, Allan},
  year={2020},
  eprint={2010.02666},
  archivePrefix={arXiv},
  primaryClass={cs.IR}
}
"""
    requires_negatives = True

    def compute(self, student: Tensor, teacher: Tensor, mask: Tensor, labels: Tensor | None) -> Tensor:
        # Row 0 of the pair-difference matrix holds x_0 - x_j for every j.
        student_margin = pair_differences(student, mask)[:, 0, 1:]
        teacher_margin = pair_differences(teacher, mask)[:, 0, 1:]
        negatives = mask[:, 1:] & mask[:, :1]
        return masked_mean((student_margin - teacher_margin) ** 2, negatives)


class RankNet(DistillLoss):
    """Logistic loss on every pair the teacher orders, ``-log sigmoid(sigma (s_i - s_j))``.

    A pair (i, j) counts when ``t_i - t_j > min_gap``, so near-ties of the teacher (noise)
    can be left out. With ``teacher_weighted=True`` each pair is weighted by the teacher's
    confidence ``P_t(i > j) - P_t(j > i) = 2 sigmoid(t_i - t_j) - 1`` (in [0, 1)), so pairs
    the teacher hardly separates count little; the teacher's raw score scale sets how fast
    that weight saturates. A query's pair losses are averaged.
    """

    name = "RankNet"
    formula = (
        "mean_{t_i - t_j > gap} w_ij * log(1 + exp(-sigma (s_i - s_j))), "
        "w_ij = 1 or 2 sigmoid(t_i - t_j) - 1"
    )
    when_to_use = (
        "Only the teacher's ordering is trustworthy (e.g. LLM or rank-based teachers), or "
        "groups have several graded candidates; without teacher_weighted it ignores how far "
        "apart the teacher puts them."
    )
    citation = """
@inproceedings{burges2005learning,
  title={Learning to Rank using Gradient Descent},
  author={Burges, Chris and Shaked, Tal and Renshaw, Erin and Lazier, Ari and Deeds, Matt
          and Hamilton, Nicole and Hullender, Greg},
  booktitle={Proceedings of the 22nd International Conference on Machine Learning},
  pages={89--96},
  year={2005}
}
"""
    requires_negatives = True
    config_fields: ClassVar[tuple[str, ...]] = ("sigma", "min_gap", "teacher_weighted")

    def __init__(self, sigma: float = 1.0, min_gap: float = 0.0, teacher_weighted: bool = False) -> None:
        super().__init__()
        self.sigma = check_positive(self.name, "sigma", sigma)
        self.min_gap = check_non_negative(self.name, "min_gap", min_gap)
        self.teacher_weighted = bool(teacher_weighted)

    def compute(self, student: Tensor, teacher: Tensor, mask: Tensor, labels: Tensor | None) -> Tensor:
        pairs = ordered_pairs(teacher, mask, self.min_gap)
        per_pair = F.softplus(-self.sigma * pair_differences(student, mask))  # = -log sigmoid
        if self.teacher_weighted:
            per_pair = per_pair * (2 * torch.sigmoid(pair_differences(teacher, mask)) - 1)
        return masked_mean(per_pair, pairs)


class Hinge(DistillLoss):
    """Margin ranking (pairwise hinge): every pair the teacher orders should be won by the
    student by at least ``margin``; ``max(0, m - (s_i - s_j))``, averaged over a query's pairs.

    Zero once the student orders every pair the teacher's way with a gap of ``margin``; it
    then stops learning, unlike RankNet's logistic loss, and ignores how far apart the
    teacher puts the two documents (only its order, above ``min_gap``).
    """

    name = "Hinge"
    formula = "mean_{t_i - t_j > gap} max(0, m - (s_i - s_j))"
    when_to_use = (
        "Only the teacher's order counts and the student should stop pushing pairs it already "
        "separates (RankSVM-style); torch's MarginRankingLoss on teacher-ordered pairs."
    )
    citation = """
@inproceedings{joachims2002optimizing,
  title={Optimizing Search Engines using Clickthrough Data},
  author={Joachims, Thorsten},
  booktitle={Proceedings of the 8th ACM SIGKDD International Conference on Knowledge Discovery and Data Mining},
  pages={133--142},
  year={2002}
}
"""
    requires_negatives = True
    config_fields: ClassVar[tuple[str, ...]] = ("margin", "min_gap")

    def __init__(self, margin: float = 1.0, min_gap: float = 0.0) -> None:
        super().__init__()
        self.margin = check_non_negative(self.name, "margin", margin)
        self.min_gap = check_non_negative(self.name, "min_gap", min_gap)

    def compute(self, student: Tensor, teacher: Tensor, mask: Tensor, labels: Tensor | None) -> Tensor:
        per_pair = F.relu(self.margin - pair_differences(student, mask))
        return masked_mean(per_pair, ordered_pairs(teacher, mask, self.min_gap))


class ConstantMarginMSE(DistillLoss):
    """Every pair the teacher orders should be separated by exactly ``margin``:
    ``((s_i - s_j) - m)^2`` (Lightning IR's ``ConstantMarginMSE``, on the teacher's order).

    A fixed target gap instead of the teacher's: robust to a teacher whose gaps are noisy or on
    another scale, but with three or more ordered documents the targets conflict (a > b > c asks
    for gaps m, m and m), so its minimum is not zero.
    """

    name = "ConstantMarginMSE"
    formula = "mean_{t_i - t_j > gap} ((s_i - s_j) - m)^2"
    when_to_use = (
        "The teacher's order is trusted but not its gaps; a margin-regression counterpart of Hinge "
        "that also pulls over-separated pairs back."
    )
    citation = LIGHTNING_IR_CITATION
    requires_negatives = True
    config_fields: ClassVar[tuple[str, ...]] = ("margin", "min_gap")

    def __init__(self, margin: float = 1.0, min_gap: float = 0.0) -> None:
        super().__init__()
        self.margin = float(margin)
        self.min_gap = check_non_negative(self.name, "min_gap", min_gap)

    def compute(self, student: Tensor, teacher: Tensor, mask: Tensor, labels: Tensor | None) -> Tensor:
        per_pair = (pair_differences(student, mask) - self.margin) ** 2
        return masked_mean(per_pair, ordered_pairs(teacher, mask, self.min_gap))


class SupervisedMarginMSE(DistillLoss):
    """Every pair the qrels order should be separated by the label gap:
    ``((s_i - s_j) - (y_i - y_j))^2`` over pairs with ``y_i > y_j`` (Lightning IR's
    ``SupervisedMarginMSE``, whose targets here are the labels). The teacher is not used; zero
    when the student's scores are the labels plus a constant. Queries whose candidates all
    share one grade have no pair and leave the mean.
    """

    name = "SupervisedMarginMSE"
    formula = "mean_{y_i > y_j} ((s_i - s_j) - (y_i - y_j))^2"
    when_to_use = (
        "Graded qrels on the candidates and no teacher to trust; or mixed in as a label term that "
        "keeps judged documents a label gap apart."
    )
    citation = ConstantMarginMSE.citation
    requires_negatives = True

    def compute(self, student: Tensor, teacher: Tensor, mask: Tensor, labels: Tensor | None) -> Tensor:
        labels = require_labels(labels, self.name)
        margins = pair_differences(student, mask) - pair_differences(labels, mask)
        return masked_mean(margins**2, ordered_pairs(labels, mask))

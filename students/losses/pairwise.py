"""Pairwise losses: the student learns score differences between documents of one query.

Both ignore a constant shift of the student or teacher scores within a query, so the
student never has to match the teacher's absolute scale.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.errors import ConfigError
from students.losses.base import DistillLoss, masked_mean, pair_differences, pair_mask


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
        if sigma <= 0:
            raise ConfigError(f"RankNet sigma must be > 0, got {sigma}", field="sigma")
        if min_gap < 0:
            raise ConfigError(f"RankNet min_gap must be >= 0, got {min_gap}", field="min_gap")
        self.sigma = float(sigma)
        self.min_gap = float(min_gap)
        self.teacher_weighted = bool(teacher_weighted)

    def compute(self, student: Tensor, teacher: Tensor, mask: Tensor, labels: Tensor | None) -> Tensor:
        teacher_diff = pair_differences(teacher, mask)
        pairs = pair_mask(mask) & (teacher_diff > self.min_gap)
        per_pair = F.softplus(-self.sigma * pair_differences(student, mask))  # = -log sigmoid
        if self.teacher_weighted:
            per_pair = per_pair * (2 * torch.sigmoid(teacher_diff) - 1)
        return masked_mean(per_pair, pairs)

"""Listwise losses: the student fits the teacher's whole candidate list of a query at once.

All three depend on teacher scores only through a softmax, so a constant shift of either
side within a query changes nothing; only entries marked valid take part.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.errors import ConfigError
from students.losses.base import (
    DistillLoss,
    masked_log_softmax,
    masked_mean,
    masked_softmax,
    mean_over_rows,
    pair_differences,
    pair_mask,
)


def _check_positive(name: str, field: str, value: float) -> float:
    if value <= 0:
        raise ConfigError(f"{name} {field} must be > 0, got {value}", field=field)
    return float(value)


def _has_negatives(mask: Tensor) -> Tensor:
    """Rows with at least two valid entries: a softmax over one document carries no signal."""
    return mask.sum(dim=-1) >= 2


class KLDiv(DistillLoss):
    """KL(softmax(t / T) || softmax(s / T)) * T^2 over each query's valid candidates.

    ``T^2`` keeps gradient magnitudes comparable across temperatures (Hinton et al.); the
    value is 0 exactly when the two distributions agree.
    """

    name = "KLDiv"
    formula = "T^2 * sum_j p_j (log p_j - log q_j), p = softmax(t / T), q = softmax(s / T)"
    when_to_use = (
        "Default for listwise groups (1 positive + many negatives) with a calibrated teacher; "
        "T > 1 transfers more of the teacher's view of the negatives."
    )
    citation = """
@article{hinton2015distilling,
  title={Distilling the Knowledge in a Neural Network},
  author={Hinton, Geoffrey and Vinyals, Oriol and Dean, Jeff},
  journal={arXiv preprint arXiv:1503.02531},
  year={2015}
}
@misc{lin2020distilling,
  title={Distilling Dense Representations for Ranking using Tightly-Coupled Teachers},
  author={Lin, Sheng-Chieh and Yang, Jheng-Hong and Lin, Jimmy},
  year={2020},
  eprint={2010.11386},
  archivePrefix={arXiv},
  primaryClass={cs.IR}
}
"""
    requires_negatives = True
    config_fields: ClassVar[tuple[str, ...]] = ("temperature",)

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = _check_positive(self.name, "temperature", temperature)

    def compute(self, student: Tensor, teacher: Tensor, mask: Tensor, labels: Tensor | None) -> Tensor:
        t = self.temperature
        teacher_log_p = masked_log_softmax(teacher / t, mask)
        student_log_p = masked_log_softmax(student / t, mask)
        row_loss = (teacher_log_p.exp().masked_fill(~mask, 0.0) * (teacher_log_p - student_log_p)).sum(dim=-1)
        return mean_over_rows(row_loss * t**2, _has_negatives(mask))


class ListNet(DistillLoss):
    """Cross-entropy between the teacher's top-one distribution softmax(t / T) and the
    student's softmax(s); minimal (the teacher's entropy) when they agree."""

    name = "ListNet"
    formula = "-sum_j softmax(t / T)_j * log softmax(s)_j"
    when_to_use = (
        "Like KLDiv but the temperature only softens the teacher, letting the student stay "
        "sharper; same gradients as KLDiv at T = 1."
    )
    citation = """
@inproceedings{cao2007learning,
  title={Learning to Rank: From Pairwise Approach to Listwise Approach},
  author={Cao, Zhe and Qin, Tao and Liu, Tie-Yan and Tsai, Ming-Feng and Li, Hang},
  booktitle={Proceedings of the 24th International Conference on Machine Learning},
  pages={129--136},
  year={2007}
}
"""
    requires_negatives = True
    config_fields: ClassVar[tuple[str, ...]] = ("temperature",)

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = _check_positive(self.name, "temperature", temperature)

    def compute(self, student: Tensor, teacher: Tensor, mask: Tensor, labels: Tensor | None) -> Tensor:
        target = masked_softmax(teacher / self.temperature, mask)
        row_loss = -(target * masked_log_softmax(student, mask)).sum(dim=-1)
        return mean_over_rows(row_loss, _has_negatives(mask))


class LambdaLoss(DistillLoss):
    """LambdaLoss with the NDCG-Loss2++ weighting (Wang et al. 2018), teacher-derived gains.

    Candidates are sorted by the student's current scores. Every valid pair (i, j) whose
    teacher gain is higher for i contributes ``-w_ij * log2 sigmoid(sigma (s_i - s_j))`` with
    ``w_ij = (mu * delta_|r_i - r_j| + |1/D_r_i - 1/D_r_j|) * |G_i - G_j|``: the NDCG-Loss2
    bound plus the LambdaRank weight, ``D_r = log2(1 + r)`` at student rank r and ``G`` the
    gains divided by the ideal DCG(@k). With ``k``, a pair counts when either document is in
    the student's top k. A query's pair losses are averaged (as sentence-transformers does).

    Gains: qrels would give ``2^grade - 1``; a teacher gives scores, and we take the
    teacher's probability ``softmax(t / T)_j`` as the gain of document j. This equals
    ``2^grade - 1`` with ``grade_j = log2(1 + c * p_j)`` for any c > 0 (NDCG only uses gain
    ratios), keeps how far apart the teacher puts documents (unlike grades from its
    ordering, which would tie a near-duplicate and a clear loser), is invariant to a
    constant shift of the teacher, and ``T`` sets how top-heavy the gains are.
    """

    name = "LambdaLoss"
    formula = (
        "mean_{G_i > G_j} -w_ij log2 sigmoid(sigma (s_i - s_j)), w_ij = |dNDCG| (NDCG-Loss2++), "
        "gains G = softmax(t / T)"
    )
    when_to_use = (
        "The cascade cares about the top of the ranking (nDCG@10): spends the student's "
        "capacity on pairs that change NDCG at the student's current ranking."
    )
    citation = """
@inproceedings{wang2018lambdaloss,
  title={The LambdaLoss Framework for Ranking Metric Optimization},
  author={Wang, Xuanhui and Li, Cheng and Golbandi, Nadav and Bendersky, Michael and Najork, Marc},
  booktitle={Proceedings of the 27th ACM International Conference on Information and Knowledge Management},
  pages={1313--1322},
  year={2018}
}
"""
    requires_negatives = True
    config_fields: ClassVar[tuple[str, ...]] = ("temperature", "k", "sigma", "mu")

    def __init__(
        self, temperature: float = 1.0, k: int | None = None, sigma: float = 1.0, mu: float = 10.0
    ) -> None:
        super().__init__()
        self.temperature = _check_positive(self.name, "temperature", temperature)
        self.sigma = _check_positive(self.name, "sigma", sigma)
        if k is not None and k < 1:
            raise ConfigError(f"LambdaLoss k must be >= 1 or None, got {k}", field="k")
        if mu < 0:
            raise ConfigError(f"LambdaLoss mu must be >= 0, got {mu}", field="mu")
        self.k = k
        self.mu = float(mu)

    def compute(self, student: Tensor, teacher: Tensor, mask: Tensor, labels: Tensor | None) -> Tensor:
        length = student.shape[-1]
        k = min(self.k or length, length)
        gains = masked_softmax(teacher / self.temperature, mask)  # 0 on padding

        # Student ranking, padding last; everything below lives in student-rank order.
        order = student.masked_fill(~mask, float("-inf")).argsort(dim=-1, descending=True)
        ranked_mask = mask.gather(1, order)
        ranked_student = student.gather(1, order)
        ranked_gains = gains.gather(1, order)

        positions = torch.arange(1, length + 2, device=student.device, dtype=student.dtype)
        inv_discount = 1.0 / torch.log2(1.0 + positions)  # 1/D_r for r = 1..L+1
        ideal_dcg = (gains.sort(dim=-1, descending=True).values * inv_discount[:length])[:, :k].sum(dim=-1)
        norm_gains = ranked_gains / ideal_dcg.clamp(min=torch.finfo(student.dtype).tiny)[:, None]

        rank = torch.arange(length, device=student.device)
        distance = (rank[:, None] - rank[None, :]).abs().clamp(min=1)  # diagonal is masked out anyway
        ndcg2 = (inv_discount[distance - 1] - inv_discount[distance]).abs()
        lambda_rank = (inv_discount[rank][:, None] - inv_discount[rank][None, :]).abs()
        weights = (self.mu * ndcg2 + lambda_rank) * pair_differences(norm_gains, ranked_mask).abs()

        in_top_k = rank < k
        pairs = (
            pair_mask(ranked_mask)
            & (pair_differences(ranked_gains, ranked_mask) > 0)
            & (in_top_k[:, None] | in_top_k[None, :])
        )
        # -log2 sigmoid(x) = softplus(-x) / ln 2
        student_diff = pair_differences(ranked_student, ranked_mask)
        per_pair = weights * F.softplus(-self.sigma * student_diff) / math.log(2)
        return masked_mean(per_pair, pairs)

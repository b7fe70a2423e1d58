"""Listwise losses: the student fits the teacher's whole candidate list of a query at once.

Each depends on the teacher only through a softmax, its order, its top-1 or a correlation,
and on the student through a softmax or score differences, so a constant shift of either
side within a query changes nothing; only entries marked valid take part, and a query with
fewer than two valid candidates (no list) leaves the batch mean.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.core.errors import ConfigError
from distill.training.losses.base import (
    LIGHTNING_IR_CITATION,
    DistillLoss,
    check_non_negative,
    check_positive,
    descending_order,
    has_negatives,
    ideal_dcg,
    inverse_log_discount,
    masked_log_softmax,
    masked_mean,
    masked_softmax,
    mean_over_rows,
    pair_differences,
    pair_mask,
    soft_cross_entropy,
    top_one,
)


class KLDiv(DistillLoss):
    """KL(softmax(t / T) || softmax(s / T_s)) * T * T_s over each query's valid candidates.

    ``temperature`` T softens the teacher; ``student_temperature`` T_s (default: T, Hinton et
    al.'s single temperature) divides the student's scores. The factor ``T * T_s`` (Hinton's
    ``T^2``) keeps gradient magnitudes comparable across temperatures. The value is 0 exactly
    when the two distributions agree, i.e. ``s / T_s = t / T`` up to a constant per query.
    """

    name = "KLDiv"
    formula = "T * T_s * sum_j p_j (log p_j - log q_j), p = softmax(t / T), q = softmax(s / T_s)"
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
    config_fields: ClassVar[tuple[str, ...]] = ("temperature", "student_temperature")

    def __init__(self, temperature: float = 1.0, student_temperature: float | None = None) -> None:
        super().__init__()
        self.temperature = check_positive(self.name, "temperature", temperature)
        self.student_temperature = check_positive(
            self.name, "student_temperature", temperature if student_temperature is None else student_temperature
        )

    def compute(self, student: Tensor, teacher: Tensor, mask: Tensor, labels: Tensor | None) -> Tensor:
        teacher_log_p = masked_log_softmax(teacher / self.temperature, mask)
        target = teacher_log_p.exp().masked_fill(~mask, 0.0)
        entropy = -(target * teacher_log_p).sum(dim=-1)
        row_loss = soft_cross_entropy(target, student / self.student_temperature, mask) - entropy
        return mean_over_rows(row_loss * self.temperature * self.student_temperature, has_negatives(mask))


class ListNet(DistillLoss):
    """Cross-entropy between the teacher's top-one distribution softmax(t / T) and the
    student's softmax(s / T_s); minimal (the teacher's entropy) when they agree. Unlike
    KLDiv, the value is not rescaled by the temperatures."""

    name = "ListNet"
    formula = "-sum_j softmax(t / T)_j * log softmax(s / T_s)_j"
    when_to_use = (
        "Like KLDiv but the temperature only softens the teacher, letting the student stay "
        "sharper (T_s = 1 by default); same gradients as KLDiv at T = T_s = 1."
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
    config_fields: ClassVar[tuple[str, ...]] = ("temperature", "student_temperature")

    def __init__(self, temperature: float = 1.0, student_temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = check_positive(self.name, "temperature", temperature)
        self.student_temperature = check_positive(self.name, "student_temperature", student_temperature)

    def compute(self, student: Tensor, teacher: Tensor, mask: Tensor, labels: Tensor | None) -> Tensor:
        target = masked_softmax(teacher / self.temperature, mask)
        row_loss = soft_cross_entropy(target, student / self.student_temperature, mask)
        return mean_over_rows(row_loss, has_negatives(mask))


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
        self.temperature = check_positive(self.name, "temperature", temperature)
        self.sigma = check_positive(self.name, "sigma", sigma)
        if k is not None and k < 1:
            raise ConfigError(f"LambdaLoss k must be >= 1 or None, got {k}", field="k")
        self.k = k
        self.mu = check_non_negative(self.name, "mu", mu)

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
        inv_discount = inverse_log_discount(positions)  # 1/D_r for r = 1..L+1
        norm_gains = ranked_gains / ideal_dcg(gains, k).clamp(min=torch.finfo(student.dtype).tiny)[:, None]

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


class ListMLE(DistillLoss):
    """Plackett-Luce negative log-likelihood of the teacher's ranking under the student's scores.

    With pi the teacher's order of a query's valid candidates (ties: column order), the loss is
    ``-sum_i w_i (s_pi(i) - log sum_{k >= i} exp(s_pi(k)))``, summed over positions and
    averaged over queries as sentence-transformers' ``ListMLELoss`` does; ``w_i = 1``. It uses
    only the teacher's order, and tends to 0 as the student separates the list in that order.
    """

    name = "ListMLE"
    formula = "-sum_i (s_pi(i) - log sum_{k>=i} exp(s_pi(k))), pi = teacher order"
    when_to_use = (
        "The teacher's full ordering is trusted but not its score gaps (rank-only or LLM teachers); "
        "every position counts the same, so long lists weigh the tail heavily."
    )
    citation = """
@inproceedings{xia2008listwise,
  title={Listwise Approach to Learning to Rank: Theory and Algorithm},
  author={Xia, Fen and Liu, Tie-Yan and Wang, Jue and Zhang, Wensheng and Li, Hang},
  booktitle={Proceedings of the 25th International Conference on Machine Learning},
  pages={1192--1199},
  year={2008}
}
"""
    requires_negatives = True

    def position_weights(self, ranked_mask: Tensor) -> Tensor:
        """Weight of each teacher position (padding last); ListMLE weighs all alike."""
        return ranked_mask.double()

    def compute(self, student: Tensor, teacher: Tensor, mask: Tensor, labels: Tensor | None) -> Tensor:
        order = descending_order(teacher, mask)
        ranked_mask = mask.gather(1, order)
        # padding gets the most negative finite score: exp() of it is 0 and no inf - inf appears
        ranked = student.masked_fill(~mask, torch.finfo(student.dtype).min).gather(1, order)
        log_tail = ranked.flip(1).logcumsumexp(dim=1).flip(1)  # log sum_{k >= i} exp(s_pi(k))
        log_prob = torch.where(ranked_mask, ranked - log_tail, torch.zeros_like(ranked))
        weights = self.position_weights(ranked_mask).to(student.dtype)
        return mean_over_rows(-(weights * log_prob).sum(dim=-1), has_negatives(mask))


class PListMLE(ListMLE):
    """Position-aware ListMLE: position i of n (teacher order) weighs ``2^(n - i) - 1``,
    normalised to sum 1 per query (sentence-transformers' ``PListMLELoss`` default), so getting
    the teacher's top documents first matters most."""

    name = "PListMLE"
    formula = "-sum_i a_i (s_pi(i) - log sum_{k>=i} exp(s_pi(k))), a_i ~ 2^(n-i) - 1, sum_i a_i = 1"
    when_to_use = (
        "Like ListMLE but for top-heavy metrics (nDCG@10): errors at the head of the teacher's "
        "order cost more than in its tail."
    )
    citation = """
@inproceedings{lan2014position,
  title={Position-Aware ListMLE: A Sequential Learning Process for Ranking},
  author={Lan, Yanyan and Zhu, Yadong and Guo, Jiafeng and Niu, Shuzi and Cheng, Xueqi},
  booktitle={Proceedings of the Thirtieth Conference on Uncertainty in Artificial Intelligence},
  pages={449--458},
  year={2014}
}
"""

    def position_weights(self, ranked_mask: Tensor) -> Tensor:
        # 2^(n - i) - 1 divided by 2^(n - 1): the same normalised weights, and no overflow for long lists
        n = ranked_mask.sum(dim=-1, keepdim=True).to(torch.float64)
        i = torch.arange(1, ranked_mask.shape[-1] + 1, device=ranked_mask.device, dtype=torch.float64)
        weights = (torch.pow(2.0, 1 - i) - torch.pow(2.0, 1 - n)).masked_fill(~ranked_mask, 0.0)
        return (weights / weights.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(torch.float64).tiny))


class InfoNCE(DistillLoss):
    """Contrastive cross-entropy: the teacher's top-1 document is the positive, the query's other
    candidates the negatives, ``-log softmax(s / tau)_top`` (Lightning IR's ``InfoNCE`` takes the
    target's argmax the same way; a temperature is added). Ties for the top go to the first.
    """

    name = "InfoNCE"
    formula = "-log softmax(s / tau)_{argmax_j t_j}"
    when_to_use = (
        "Only the teacher's top-1 is trusted (hard negatives are unjudged); tau < 1 sharpens the "
        "contrast, as in dense-retrieval training."
    )
    citation = """
@article{oord2018representation,
  title={Representation Learning with Contrastive Predictive Coding},
  author={van den Oord, Aaron and Li, Yazhe and Vinyals, Oriol},
  journal={arXiv preprint arXiv:1807.03748},
  year={2018}
}
"""
    requires_negatives = True
    config_fields: ClassVar[tuple[str, ...]] = ("temperature",)

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = check_positive(self.name, "temperature", temperature)

    def compute(self, student: Tensor, teacher: Tensor, mask: Tensor, labels: Tensor | None) -> Tensor:
        log_p = masked_log_softmax(student / self.temperature, mask).gather(1, top_one(teacher, mask)).squeeze(1)
        return mean_over_rows(-log_p, has_negatives(mask))


class PearsonCorrelation(DistillLoss):
    """``1 - r`` with r the Pearson correlation of a query's student and teacher scores (Lightning
    IR's ``PearsonCorrelation``). Invariant to shifting and to positively scaling either side;
    0 when the student is an increasing linear function of the teacher. Queries whose teacher
    scores are all equal have no correlation and leave the mean.
    """

    name = "PearsonCorrelation"
    formula = "1 - sum_j (s_j - mean s)(t_j - mean t) / (||s - mean s|| ||t - mean t||)"
    when_to_use = (
        "Student and teacher live on different scales and the student should follow the teacher's "
        "relative spacing without matching its spread (a scale-free MarginMSE)."
    )
    citation = LIGHTNING_IR_CITATION
    requires_negatives = True

    def compute(self, student: Tensor, teacher: Tensor, mask: Tensor, labels: Tensor | None) -> Tensor:
        count = mask.sum(dim=-1, keepdim=True).clamp(min=1)

        def centred(x: Tensor) -> Tensor:
            x = x.masked_fill(~mask, 0.0)
            return (x - x.sum(dim=-1, keepdim=True) / count).masked_fill(~mask, 0.0)

        cs, ct = centred(student), centred(teacher)
        ss, tt = (cs**2).sum(dim=-1), (ct**2).sum(dim=-1)
        r = (cs * ct).sum(dim=-1) / (ss * tt).clamp(min=torch.finfo(student.dtype).tiny).sqrt()
        return mean_over_rows(1.0 - r, has_negatives(mask) & (tt > 0))

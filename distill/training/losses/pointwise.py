"""Pointwise losses: each document's score is fitted on its own.

``PointwiseMSE`` regresses the teacher's scores and ``BCE`` its sigmoid probabilities;
``GradedCE`` classifies each document into its qrels grade; ``HardLabels`` trains on qrels and
is meant to be mixed with a distillation loss (``build_loss(..., hard_label_weight=w)``).
None of them ignores a shift of the scores: they fix the student's absolute scale.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.core.errors import ConfigError
from distill.training.losses.base import (
    DistillLoss,
    check_positive,
    masked_mean,
    require_labels,
)
from distill.training.objectives import hard_label_loss

# monoBERT: the pointwise BCE reranker that the BCE losses here follow
NOGUEIRA2019 = """
@article{nogueira2019passage,
  title={Passage Re-ranking with BERT},
  author={Nogueira, Rodrigo and Cho, Kyunghyun},
  journal={arXiv preprint arXiv:1901.04085},
  year={2019}
}
"""


class PointwiseMSE(DistillLoss):
    """Mean squared error between student and teacher scores on the valid entries.

    Forces the student onto the teacher's absolute scale, which is stricter than ranking
    needs but gives calibrated scores (useful when scores are thresholded or fused).
    """

    name = "MSE"
    formula = "mean_j (s_j - t_j)^2"
    when_to_use = (
        "Student must reproduce the teacher's score scale (thresholds, score fusion) or groups "
        "have a single document; ranking-wise it wastes capacity on per-query offsets."
    )
    citation = """
@inproceedings{ba2014deep,
  title={Do Deep Nets Really Need to be Deep?},
  author={Ba, Jimmy and Caruana, Rich},
  booktitle={Advances in Neural Information Processing Systems},
  pages={2654--2662},
  year={2014}
}
"""

    def compute(self, student: Tensor, teacher: Tensor, mask: Tensor, labels: Tensor | None) -> Tensor:
        clean_s, clean_t = student.masked_fill(~mask, 0.0), teacher.masked_fill(~mask, 0.0)
        return masked_mean((clean_s - clean_t) ** 2, mask)


class BCE(DistillLoss):
    """Binary cross-entropy between the student's ``sigmoid(s)`` and the teacher's probability
    ``sigmoid(t / T)`` for each document (soft labels, as sentence-transformers'
    ``BinaryCrossEntropyLoss`` takes float labels).

    Minimal, at the entropy of the teacher's probabilities, where ``s = t / T``. Meant for
    teachers trained with a sigmoid head (monoBERT-style logits); ``T`` softens (> 1) or
    sharpens (< 1) the teacher's probabilities.
    """

    name = "BCE"
    formula = "mean_j -[p_j log sigmoid(s_j) + (1 - p_j) log sigmoid(-s_j)], p_j = sigmoid(t_j / T)"
    when_to_use = (
        "Teacher's sigmoid is a calibrated relevance probability and the student's score should be one "
        "too (thresholds); ranking-wise it spends capacity on per-query offsets, like MSE."
    )
    citation = NOGUEIRA2019
    config_fields: ClassVar[tuple[str, ...]] = ("temperature",)

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = check_positive(self.name, "temperature", temperature)

    def compute(self, student: Tensor, teacher: Tensor, mask: Tensor, labels: Tensor | None) -> Tensor:
        target = torch.sigmoid(teacher.masked_fill(~mask, 0.0) / self.temperature)
        per_doc = F.binary_cross_entropy_with_logits(student.masked_fill(~mask, 0.0), target, reduction="none")
        return masked_mean(per_doc, mask)


class GradedCE(DistillLoss):
    """Cross-entropy over the relevance classes 0..G of the qrels, from one score per document.

    A single score cannot carry G + 1 logits, so the classes come from an ordinal
    (cumulative-logit) model: ``P(y > k) = sigmoid(s - theta_k)`` with fixed, evenly spaced
    thresholds ``theta_k = spacing * (k - (G - 1) / 2)``, k = 0..G-1, and
    ``P(y = k) = P(y > k - 1) - P(y > k)``. The loss is ``-log P(y = label)``; labels above G
    count as G and negative ones as 0. With G = 1 it is the BCE on ``label > 0``. A
    document of an interior grade k is fitted best at the midpoint of theta_{k-1} and
    theta_k, so higher grades are pushed to higher scores, as McRank ranks by expected grade.
    The teacher is not used: it is a label loss, like ``HardLabels``.
    """

    name = "GradedCE"
    formula = (
        "mean_j -log P(y = label_j | s_j), P(y > k) = sigmoid(s_j - theta_k), "
        "theta_k = spacing * (k - (G - 1) / 2)"
    )
    when_to_use = (
        "Graded qrels (0..G) for every candidate and no teacher to trust: a supervised baseline, or a "
        "hard-label term that keeps the grades apart."
    )
    citation = """
@inproceedings{li2007mcrank,
  title={McRank: Learning to Rank Using Multiple Classification and Gradient Boosting},
  author={Li, Ping and Burges, Christopher J. C. and Wu, Qiang},
  booktitle={Advances in Neural Information Processing Systems},
  pages={897--904},
  year={2007}
}
@article{mccullagh1980regression,
  title={Regression Models for Ordinal Data},
  author={McCullagh, Peter},
  journal={Journal of the Royal Statistical Society: Series B (Methodological)},
  volume={42},
  number={2},
  pages={109--127},
  year={1980}
}
"""
    config_fields: ClassVar[tuple[str, ...]] = ("max_grade", "spacing")

    def __init__(self, max_grade: int = 1, spacing: float = 2.0) -> None:
        super().__init__()
        if int(max_grade) != max_grade or max_grade < 1:
            raise ConfigError(f"GradedCE max_grade must be an integer >= 1, got {max_grade}", field="max_grade")
        self.max_grade = int(max_grade)
        self.spacing = check_positive(self.name, "spacing", spacing)

    def compute(self, student: Tensor, teacher: Tensor, mask: Tensor, labels: Tensor | None) -> Tensor:
        labels = require_labels(labels, self.name)
        g = self.max_grade
        grade = labels.masked_fill(~mask, 0.0).round().clamp(0, g)
        scores = student.masked_fill(~mask, 0.0)
        # log P(y = k) = log sigmoid(s - theta_{k-1}) + log sigmoid(theta_k - s) + log(1 - exp(-spacing)),
        # where a missing threshold (k = 0 or k = G) drops its term: sigma(a) - sigma(b) factorises
        # as sigma(a) sigma(-b) (1 - exp(b - a)), and theta_k - theta_{k-1} = spacing.
        lower = self.spacing * (grade - 1 - (g - 1) / 2)  # theta_{k-1}
        upper = lower + self.spacing  # theta_k
        log_p = (
            torch.where(grade > 0, F.logsigmoid(scores - lower), torch.zeros_like(scores))
            + torch.where(grade < g, F.logsigmoid(upper - scores), torch.zeros_like(scores))
            + torch.where((grade > 0) & (grade < g), math.log(-math.expm1(-self.spacing)), 0.0)
        )
        return masked_mean(-log_p, mask)


class HardLabels(DistillLoss):
    """A term on the qrels labels, ignoring the teacher.

    ``kind="bce"``: binary cross-entropy with logits on ``labels > 0`` per document (the
    monoBERT objective). ``kind="listwise_ce"``: cross-entropy between the label
    distribution ``y / sum(y)`` (negative grades count as 0) and the student's softmax over
    the group (localized contrastive estimation when one positive sits in column 0); queries
    without a relevant candidate are skipped. ``kind="listnet"``: the same cross-entropy
    against ``softmax(y)``, the target of sentence-transformers' ``ListNetLoss`` on labels: with
    one positive among 7 negatives it asks for a logit gap of 1, not an unbounded one, which
    acts as label smoothing.
    """

    name = "HardLabels"
    formula = (
        "bce: mean_j BCE(sigmoid(s_j), [y_j > 0]);  "
        "listwise_ce: -sum_j (y_j / sum_k y_k) log softmax(s)_j;  "
        "listnet: -sum_j softmax(y)_j log softmax(s)_j"
    )
    when_to_use = (
        "Mixed in with a small weight to anchor the student on judged relevance where the "
        "teacher is wrong; on its own it is the no-distillation baseline."
    )
    citation = NOGUEIRA2019 + """@inproceedings{gao2021rethink,
  title={Rethink Training of BERT Rerankers in Multi-Stage Retrieval Pipeline},
  author={Gao, Luyu and Dai, Zhuyun and Callan, Jamie},
  booktitle={Advances in Information Retrieval (ECIR)},
  pages={280--286},
  year={2021}
}
"""
    config_fields: ClassVar[tuple[str, ...]] = ("kind",)
    KINDS: ClassVar[tuple[str, ...]] = ("bce", "listwise_ce", "listnet")

    def __init__(self, kind: Literal["bce", "listwise_ce", "listnet"] = "bce") -> None:
        super().__init__()
        if kind not in self.KINDS:
            raise ConfigError(f"unknown hard-label kind '{kind}'; choose one of: {', '.join(self.KINDS)}")
        self.kind = kind
        self.requires_negatives = kind != "bce"

    def compute(self, student: Tensor, teacher: Tensor, mask: Tensor, labels: Tensor | None) -> Tensor:
        labels = require_labels(labels, f"{self.name} ({self.kind})",
                                "; set hard_label_weight to 0 or train on data with qrels")
        return hard_label_loss(self.kind, student, mask, labels)

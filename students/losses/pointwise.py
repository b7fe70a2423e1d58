"""Pointwise losses: each document's score is fitted on its own.

``PointwiseMSE`` regresses the teacher's scores; ``HardLabels`` trains on qrels and is
meant to be mixed with a distillation loss (``build_loss(..., hard_label_weight=w)``).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch.nn.functional as F
from torch import Tensor

from distill.errors import ConfigError
from students.losses.base import DistillLoss, masked_log_softmax, masked_mean, masked_softmax, mean_over_rows


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
    citation = """
@article{nogueira2019passage,
  title={Passage Re-ranking with BERT},
  author={Nogueira, Rodrigo and Cho, Kyunghyun},
  journal={arXiv preprint arXiv:1901.04085},
  year={2019}
}
@inproceedings{gao2021rethink,
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
        if labels is None:
            raise ConfigError(
                f"{self.name} ({self.kind}) needs qrels labels for every candidate, but the batch has "
                "none; set hard_label_weight to 0 or train on data with qrels"
            )
        grades = labels.masked_fill(~mask, 0.0).clamp(min=0.0)
        if self.kind == "bce":
            logits = student.masked_fill(~mask, 0.0)
            targets = (grades > 0).to(logits.dtype)
            per_doc = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
            return masked_mean(per_doc, mask)
        total = grades.sum(dim=-1, keepdim=True)
        target = masked_softmax(grades, mask) if self.kind == "listnet" else grades / total.clamp(min=1e-12)
        row_loss = -(target * masked_log_softmax(student, mask)).sum(dim=-1)
        return mean_over_rows(row_loss, (total.squeeze(-1) > 0) & (mask.sum(dim=-1) >= 2))

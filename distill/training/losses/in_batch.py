"""In-batch losses for the bi-encoder student: other queries' documents as extra negatives.

They take ``student [B, B*L]``, each query scored against every document of the batch (column
``c*L + j`` is document j of group c; the bi-encoder adapter builds the matrix from the
embeddings it already has), and ``teacher``/``mask``/``labels`` of the groups, ``[B, L]``.

Cross-query pairs, as Lightning IR treats them (``InBatchLossFunction.get_ib_idcs``): the
teacher never scored query b against group c's documents, and no teacher score is made up for
them. Every valid document of every other group is a negative of query b, whatever its
teacher score for its own query, including other queries' positives and a document that
happens to sit in several groups. Teacher scores are used only inside a query's own group.
Padding documents take no part in any row.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from distill.training.losses.base import (
    IN_BATCH,
    LIGHTNING_IR_CITATION,
    DistillLoss,
    check_positive,
    masked_log_softmax,
    mean_over_rows,
    top_one,
)


def _in_batch_cross_entropy(student: Tensor, candidates: Tensor, positive: Tensor, rows: Tensor) -> Tensor:
    """Mean over ``rows`` of ``-log softmax(student[b, candidates[b]])[positive[b]]``."""
    log_p = masked_log_softmax(student, candidates).gather(1, positive[:, None]).squeeze(1)
    return mean_over_rows(-log_p, rows & (candidates.sum(dim=-1) >= 2))


def _own_block(mask: Tensor) -> Tensor:
    """``[B, B*L]``: True on row b's own group's columns."""
    batch, length = mask.shape
    eye = torch.eye(batch, dtype=torch.bool, device=mask.device)
    return eye.repeat_interleave(length, dim=1)


class InBatchCE(DistillLoss):
    """Cross-entropy of each query's positive (column 0 of its group) against every other valid
    document of the batch: its own group's other candidates and all documents of the other
    groups (Lightning IR's ``InBatchCrossEntropy`` with its default "all" sampling;
    sentence-transformers' ``MultipleNegativesRankingLoss`` with hard negatives). The teacher is
    not used: it trains on the groups' positives, so it is the supervised contrastive baseline.
    """

    name = "InBatchCE"
    formula = "-log softmax_{all valid docs of the batch}(s_b)_{(b, 0)}"
    when_to_use = (
        "Bi-encoder with one trusted positive per query (column 0): many cheap negatives from the "
        "other queries; the dense-retrieval standard (MNRL)."
    )
    citation = """
@inproceedings{karpukhin2020dense,
  title={Dense Passage Retrieval for Open-Domain Question Answering},
  author={Karpukhin, Vladimir and O{\\u{g}}uz, Barlas and Min, Sewon and Lewis, Patrick and Wu, Ledell
          and Edunov, Sergey and Chen, Danqi and Yih, Wen-tau},
  booktitle={Proceedings of the 2020 Conference on Empirical Methods in Natural Language Processing},
  pages={6769--6781},
  year={2020}
}
""" + LIGHTNING_IR_CITATION
    requires_negatives = False  # other queries' documents are negatives even for groups of one
    signature: ClassVar[str] = IN_BATCH

    def compute(self, student: Tensor, teacher: Tensor, mask: Tensor, labels: Tensor | None) -> Tensor:
        batch, length = mask.shape
        candidates = mask.reshape(1, -1).expand(batch, -1)
        positive = torch.arange(batch, device=mask.device) * length
        return _in_batch_cross_entropy(student, candidates, positive, mask[:, 0])


class ScoreBasedInBatchCE(DistillLoss):
    """In-batch cross-entropy whose positive and own-group negatives come from the teacher
    (Lightning IR's ``ScoreBasedInBatchCrossEntropy``): the positive of query b is its group's
    teacher top-1 (ties: the first); its own candidates count as negatives only when the
    teacher scores them at least ``min_target_diff`` below that top-1 (likely false negatives
    are left out); every document of the other groups is a negative.

    Lightning IR then randomly drops negatives until every query has as many as the poorest,
    because it stacks them into a rectangular tensor; here the candidates are a mask, so every
    negative is kept and the loss is deterministic.
    """

    name = "ScoreBasedInBatchCE"
    formula = (
        "-log softmax_{top_b, own j with t_top - t_j >= d, all docs of other groups}(s_b)_{top_b}, "
        "top_b = argmax_j t_bj"
    )
    when_to_use = (
        "Bi-encoder distillation with many cheap in-batch negatives, trusting the teacher's top-1 "
        "instead of the qrels; min_target_diff (teacher score units) guards against false negatives."
    )
    citation = LIGHTNING_IR_CITATION
    requires_negatives = False
    signature: ClassVar[str] = IN_BATCH
    config_fields: ClassVar[tuple[str, ...]] = ("min_target_diff",)

    def __init__(self, min_target_diff: float = 1.0) -> None:
        super().__init__()
        self.min_target_diff = check_positive(self.name, "min_target_diff", min_target_diff)

    def compute(self, student: Tensor, teacher: Tensor, mask: Tensor, labels: Tensor | None) -> Tensor:
        batch, length = mask.shape
        top = top_one(teacher, mask)
        clean = teacher.masked_fill(~mask, 0.0)
        own = mask & (clean.gather(1, top) - clean >= self.min_target_diff)
        own = own.scatter(1, top, mask.gather(1, top))  # the positive itself
        own_block = _own_block(mask)
        others = mask.reshape(1, -1).expand(batch, -1) & ~own_block
        candidates = others | (own_block & own.repeat(1, batch))
        positive = torch.arange(batch, device=mask.device) * length + top.squeeze(1)
        return _in_batch_cross_entropy(student, candidates, positive, mask.any(dim=-1))

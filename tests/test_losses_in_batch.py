"""In-batch losses (every query against every document of the batch): values by hand, padding, shift, the
mixture with group losses and the trainers' adapters."""

from __future__ import annotations

import math

import pytest
import torch
from test_losses import loss_and_grad, mean, softmax

from distill.core.errors import ConfigError
from distill.training.losses import IN_BATCH, HardLabels, InBatchCE, KLDiv, ScoreBasedInBatchCE, build_loss

# ---- in-batch losses ----------------------------------------------------------------------

def in_batch_example(seed: int = 0, lengths=(3, 2, 3)):
    """Three groups of up to 3 documents, student scores from random embeddings: [3, 9]."""
    gen = torch.Generator().manual_seed(seed)
    batch, length = len(lengths), max(lengths)
    queries = torch.randn(batch, 4, generator=gen, dtype=torch.float64)
    docs = torch.randn(batch, length, 4, generator=gen, dtype=torch.float64)
    student = queries @ docs.reshape(-1, 4).T
    teacher = 2 * torch.randn(batch, length, generator=gen, dtype=torch.float64)
    mask = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
    return student, teacher, mask


def in_batch_by_hand(student, mask, positive_col, own_negative) -> float:
    """Mean over queries of -log softmax over {positive, own negatives, every valid doc of other groups}."""
    batch, length = mask.shape
    rows = []
    for b in range(batch):
        cols = [c * length + j for c in range(batch) for j in range(length) if mask[c, j]
                and (c != b or j == positive_col[b] or own_negative(b, j))]
        logits = [float(student[b, col]) for col in cols]
        rows.append(-math.log(softmax(logits)[cols.index(b * length + positive_col[b])]))
    return mean(rows)


def test_in_batch_ce_by_hand():
    student, teacher, mask = in_batch_example()
    expected = in_batch_by_hand(student, mask, [0, 0, 0], lambda b, j: True)
    assert float(InBatchCE()(student, teacher, mask)) == pytest.approx(expected)


@pytest.mark.parametrize("min_target_diff", [0.5, 2.0])
def test_score_based_in_batch_ce_by_hand(min_target_diff):
    student, teacher, mask = in_batch_example()
    t = teacher.masked_fill(~mask, -math.inf)
    top = t.argmax(dim=1).tolist()
    expected = in_batch_by_hand(
        student, mask, top, lambda b, j: j != top[b] and float(t[b, top[b]] - t[b, j]) >= min_target_diff
    )
    assert float(ScoreBasedInBatchCE(min_target_diff)(student, teacher, mask)) == pytest.approx(expected)


def test_in_batch_of_one_query_is_the_group_cross_entropy():
    """With one query the batch holds no other group: InBatchCE is the listwise CE on column 0."""
    student, teacher, mask = in_batch_example(lengths=(3,))
    labels = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    assert float(InBatchCE()(student, teacher, mask)) == pytest.approx(
        float(HardLabels("listwise_ce")(student, teacher, mask, labels))
    )


@pytest.mark.parametrize("cls", [InBatchCE, lambda: ScoreBasedInBatchCE(1.0)], ids=["InBatchCE", "ScoreBased"])
def test_in_batch_ignores_teacher_scores_across_queries(cls):
    """The teacher never scored query b against group c's documents: changing group c's teacher
    scores (for its own query) changes only row c's choice of positive and negatives."""
    student, teacher, mask = in_batch_example()
    loss = cls()
    changed = teacher.clone()
    changed[1] = torch.tensor([5.0, -5.0, 0.0], dtype=torch.float64)
    student.requires_grad_(True)
    grad_before = torch.autograd.grad(loss(student, teacher, mask), student)[0]
    grad_after = torch.autograd.grad(loss(student, changed, mask), student)[0]
    for b in (0, 2):  # rows of the other queries see the same candidates and positive
        torch.testing.assert_close(grad_before[b], grad_after[b])


@pytest.mark.parametrize("fill", [math.nan, math.inf, -1e30])
@pytest.mark.parametrize("cls", [InBatchCE, ScoreBasedInBatchCE], ids=["InBatchCE", "ScoreBased"])
def test_in_batch_padding_changes_nothing(cls, fill):
    student, teacher, mask = in_batch_example()
    loss = cls()
    columns = mask.reshape(1, -1).expand_as(student)
    clean_value, clean_grad = loss_and_grad(loss, student, teacher, mask, None)
    dirty_value, dirty_grad = loss_and_grad(
        loss, student.masked_fill(~columns, fill), teacher.masked_fill(~mask, fill), mask, None
    )
    assert torch.isfinite(dirty_value) and torch.isfinite(dirty_grad).all()
    assert float(dirty_value) == pytest.approx(float(clean_value), rel=1e-12)
    torch.testing.assert_close(dirty_grad, clean_grad)
    assert (dirty_grad[~columns] == 0).all()

    # padding equals absence: one more all-padding column per group changes nothing
    batch, length = mask.shape
    wider = torch.full((batch, batch, length + 1), fill, dtype=torch.float64)
    wider[:, :, :length] = student.view(batch, batch, length)
    wide_mask = torch.cat([mask, torch.zeros(batch, 1, dtype=torch.bool)], dim=1)
    wide_teacher = torch.cat([teacher, torch.full((batch, 1), fill, dtype=torch.float64)], dim=1)
    assert float(loss(wider.view(batch, -1), wide_teacher, wide_mask)) == pytest.approx(float(clean_value))


@pytest.mark.parametrize("cls", [InBatchCE, ScoreBasedInBatchCE], ids=["InBatchCE", "ScoreBased"])
def test_in_batch_shift_minimum_and_gradients(cls):
    student, teacher, mask = in_batch_example()
    loss = cls()
    base = float(loss(student, teacher, mask))
    shift = torch.tensor([[3.0], [-2.0], [0.5]], dtype=torch.float64)
    assert float(loss(student + shift, teacher, mask)) == pytest.approx(base)
    assert float(loss(student, teacher - shift, mask)) == pytest.approx(base)
    # the minimum: each query's positive far above every other document of the batch
    batch, length = mask.shape
    top = teacher.masked_fill(~mask, -math.inf).argmax(dim=1) if cls is ScoreBasedInBatchCE else torch.zeros(3).long()
    ideal = torch.zeros_like(student)
    ideal[torch.arange(batch), torch.arange(batch) * length + top] = 50.0
    assert float(loss(ideal, teacher, mask)) < 1e-15 < base
    _, grad = loss_and_grad(loss, student.float(), teacher.float(), mask, None)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_in_batch_shapes_and_mixtures():
    student, teacher, mask = in_batch_example()
    with pytest.raises(ValueError, match=r"should be \(3, 9\)"):
        InBatchCE()(student[:, :3], teacher, mask)
    with pytest.raises(ValueError, match=r"should be \(3, 3\)"):
        KLDiv()(student, teacher, mask)
    # a mixture with an in-batch part takes the in-batch matrix; group parts see the diagonal blocks
    mixture = build_loss("InBatchCE", hard_label_weight=0.5, hard_label_kind="listwise_ce")
    assert mixture.signature == IN_BATCH
    labels = torch.zeros_like(teacher)
    labels[:, 0] = 1.0
    own = torch.stack([student[b, b * 3:(b + 1) * 3] for b in range(3)])
    expected = float(InBatchCE()(student, teacher, mask)) + 0.5 * float(
        HardLabels("listwise_ce")(own, teacher, mask, labels))
    assert float(mixture(student, teacher, mask, labels)) == pytest.approx(expected)
    with pytest.raises(ConfigError, match="min_target_diff"):
        ScoreBasedInBatchCE(0.0)


def test_cross_encoder_adapter_refuses_in_batch_losses():
    from distill.training.trainer import CrossEncoderGroupLoss

    with pytest.raises(ConfigError, match="in-batch"):
        CrossEncoderGroupLoss(model=None, loss=InBatchCE())


def test_bi_encoder_adapter_scores_every_query_against_every_document(tiny_bi_encoder):
    """The bi-encoder adapter hands in-batch losses the [B, B*L] matrix of its own embeddings."""
    from sentence_transformers import SentenceTransformer

    from distill.training.groups import MASK_ROW, RELEVANCE_ROW, TEACHER_ROW
    from distill.training.trainer import BiEncoderGroupLoss

    model = SentenceTransformer(str(tiny_bi_encoder), device="cpu")
    queries = ["alpha beta", "gamma delta"]
    columns = [["alpha doc", "gamma doc"], ["beta doc", ""]]  # group 1 has one real document
    labels = torch.zeros(2, 3, 2)
    labels[:, TEACHER_ROW] = torch.tensor([[2.0, 1.0], [0.5, 0.0]])
    labels[:, MASK_ROW] = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    labels[:, RELEVANCE_ROW, 0] = 1.0

    def features(texts):
        return dict(model.tokenize(texts))

    adapter = BiEncoderGroupLoss(model, InBatchCE(), similarity="dot", scale=0.5)
    model.eval()
    with torch.no_grad():
        value_ = adapter([features(queries), *(features(c) for c in columns)], labels)
        q = model.encode(queries, convert_to_tensor=True)
        d = model.encode([columns[0][0], columns[1][0], columns[0][1], columns[1][1]], convert_to_tensor=True)
    # column c*L + j is document j of group c
    student = 0.5 * q.double() @ d.double().T
    mask = labels[:, MASK_ROW] > 0.5
    assert float(value_) == pytest.approx(float(InBatchCE()(student, labels[:, TEACHER_ROW].double(), mask)), rel=1e-4)

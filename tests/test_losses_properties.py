"""Properties every distillation loss shares: masking, shift invariance, gradients, low precision, and where each
is minimal (at the teacher, or in the limit of separating the teacher's order)."""

from __future__ import annotations

import math

import pytest
import torch
from test_losses import CONFIGS, SHIFT_INVARIANT, loss_and_grad, mean, random_batch, softmax

from distill.training.losses import KLDiv, ListNet, PointwiseMSE

# ---- properties -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["MarginMSE", "KLDiv", "KLDiv-T3", "MSE"])
def test_zero_when_student_equals_teacher(name):
    student, teacher, mask, labels, _ = random_batch()
    loss = CONFIGS[name]()
    assert abs(float(loss(teacher, teacher, mask, labels))) < 1e-12
    assert float(loss(teacher + student, teacher, mask, labels)) > 1e-3


def test_listnet_is_minimal_at_the_teacher():
    student, teacher, mask, labels, lengths = random_batch()
    at_teacher = float(ListNet()(teacher, teacher, mask, labels))
    entropies = []
    for row, n in zip(teacher.tolist(), lengths, strict=True):
        if n >= 2:
            p = softmax(row[:n])
            entropies.append(-sum(pj * math.log(pj) for pj in p))
    assert at_teacher == pytest.approx(mean(entropies))
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        perturbed = teacher + 0.3 * torch.randn(teacher.shape, generator=gen, dtype=torch.float64)
        assert float(ListNet()(perturbed, teacher, mask, labels)) > at_teacher


@pytest.mark.parametrize(
    "fill", [(1e30, -1e30, 7.0), (math.inf, math.nan, math.nan)], ids=["huge", "inf-nan"]
)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_masked_entries_change_nothing(name, fill):
    """Garbage in padding changes neither value nor gradients, and padding equals absence."""
    student, teacher, mask, labels, lengths = random_batch()
    student_fill, teacher_fill, label_fill = fill
    loss = CONFIGS[name]()

    def garbage(x: torch.Tensor, fill: float) -> torch.Tensor:
        signs = torch.where(torch.arange(x.numel()).reshape(x.shape) % 2 == 0, 1.0, -1.0).double()
        return torch.where(mask, x, fill * signs)

    clean_value, clean_grad = loss_and_grad(
        loss, garbage(student, 0.0), garbage(teacher, 0.0), mask, garbage(labels, 0.0)
    )
    dirty_value, dirty_grad = loss_and_grad(
        loss, garbage(student, student_fill), garbage(teacher, teacher_fill), mask,
        garbage(labels, label_fill),
    )
    assert torch.isfinite(dirty_value) and torch.isfinite(dirty_grad).all()
    assert dirty_value == pytest.approx(float(clean_value), rel=1e-12)
    torch.testing.assert_close(dirty_grad, clean_grad)
    assert (dirty_grad[~mask] == 0).all()

    # The batch value is the mean of the rows' values, each computed without any padding;
    # a lone document is no group for the losses that need negatives.
    smallest = 2 if loss.requires_negatives else 1
    rows = [
        float(loss(student[b:b + 1, :n], teacher[b:b + 1, :n], mask[b:b + 1, :n], labels[b:b + 1, :n]))
        for b, n in enumerate(lengths)
        if n >= smallest
    ]
    assert float(clean_value) == pytest.approx(mean(rows))


@pytest.mark.parametrize("name", SHIFT_INVARIANT)
def test_ignores_a_constant_shift_per_row(name):
    student, teacher, mask, labels, _ = random_batch()
    loss = CONFIGS[name]()
    shift = torch.tensor([[5.0], [-3.0], [0.5], [1.0], [2.0]], dtype=torch.float64)
    base = float(loss(student, teacher, mask, labels))
    assert float(loss(student + shift, teacher, mask, labels)) == pytest.approx(base, rel=1e-9)
    assert float(loss(student, teacher - 2 * shift, mask, labels)) == pytest.approx(base, rel=1e-9)


def test_mse_does_see_a_shift():
    student, teacher, mask, labels, _ = random_batch()
    assert float(PointwiseMSE()(student + 1.0, teacher, mask)) != pytest.approx(
        float(PointwiseMSE()(student, teacher, mask))
    )


@pytest.mark.parametrize("name", list(CONFIGS))
def test_gradients_reach_the_student(name):
    student, teacher, mask, labels, _ = random_batch(seed=3)
    value_, grad = loss_and_grad(CONFIGS[name](), student.float(), teacher.float(), mask, labels.float())
    assert value_.dtype == torch.float32
    assert torch.isfinite(grad).all()
    assert grad[mask].abs().sum() > 0


def test_low_precision_scores_are_computed_in_float32():
    student, teacher, mask, _, _ = random_batch()
    student, teacher = student.bfloat16(), teacher.bfloat16()
    out = KLDiv()(student, teacher, mask)
    assert out.dtype == torch.float32
    assert float(out) == pytest.approx(float(KLDiv()(student.float(), teacher.float(), mask)))
# ---- minima: where the student reproduces the teacher (or the labels) -------------------

# Losses minimal exactly at a student derived from the teacher (t) or labels (y), up to a
# per-row constant: the gradient vanishes there and any perturbation raises the value.
EXACT_MINIMA = {
    "MSE": lambda t, y: t,
    "MarginMSE": lambda t, y: t + 1.0,
    "KLDiv": lambda t, y: t - 2.0,
    "KLDiv-T2-Ts0.5": lambda t, y: t * 0.25,
    "ListNet": lambda t, y: t,
    "ListNet-T0.5-Ts2": lambda t, y: t * 4.0,
    "PearsonCorrelation": lambda t, y: 3.0 * t - 1.0,
    "SupervisedMarginMSE": lambda t, y: y + 0.5,
    "BCE": lambda t, y: t,
    "BCE-T2": lambda t, y: t / 2.0,
}
# Losses whose infimum 0 is approached as the student separates the teacher's order ever more.
LIMIT_ZERO = ["Hinge", "ListMLE", "PListMLE", "InfoNCE", "InfoNCE-T0.1", "ApproxNDCG", "ApproxNDCG-T0.5-G2",
              "ApproxMRR", "ApproxRankMSE", "ApproxRankMSE-log2", "ApproxRankMSE-reciprocal"]


@pytest.mark.parametrize("name", list(EXACT_MINIMA))
def test_minimum_at_the_teacher(name):
    student, teacher, mask, labels, _ = random_batch(seed=5)
    loss = CONFIGS[name]()
    ideal = EXACT_MINIMA[name](teacher, labels)
    at_ideal, grad = loss_and_grad(loss, ideal, teacher, mask, labels)
    assert grad.abs().max() < 1e-9
    gen = torch.Generator().manual_seed(2)
    for _ in range(10):
        noise = 0.3 * torch.randn(ideal.shape, generator=gen, dtype=torch.float64)
        assert float(loss(ideal + noise, teacher, mask, labels)) > float(at_ideal)


@pytest.mark.parametrize("name", LIMIT_ZERO)
def test_tends_to_zero_as_the_student_separates_the_teacher_order(name):
    gen = torch.Generator().manual_seed(4)
    teacher = torch.stack([torch.randperm(5, generator=gen) for _ in range(3)]).double()  # gaps >= 1, no ties
    mask = torch.ones_like(teacher, dtype=torch.bool)
    loss = CONFIGS[name]()
    values = [float(loss(scale * teacher, teacher, mask)) for scale in (0.5, 3.0, 100.0)]
    assert values[0] > values[2] and values[0] >= values[1] >= values[2] >= 0  # Hinge is 0 from scale 1 on
    assert values[2] < 1e-6
    assert float(loss(-100.0 * teacher, teacher, mask)) > values[0]  # the reversed order is worst

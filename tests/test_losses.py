"""The math of the distillation losses: the configurations every loss test runs, and the core losses' values
computed by hand on a 2x3 example."""

from __future__ import annotations

import math

import pytest
import torch

from distill.training.losses import (
    BCE,
    ApproxMRR,
    ApproxNDCG,
    ApproxRankMSE,
    ConstantMarginMSE,
    GradedCE,
    HardLabels,
    Hinge,
    InfoNCE,
    KLDiv,
    LambdaLoss,
    ListMLE,
    ListNet,
    MarginMSE,
    Mixture,
    PearsonCorrelation,
    PListMLE,
    PointwiseMSE,
    RankNet,
    SupervisedMarginMSE,
    build_loss,
)

torch.set_num_threads(1)

# Every group-loss configuration the tests run; ids name them in pytest's output.
CONFIGS = {
    "MarginMSE": MarginMSE,
    "KLDiv": KLDiv,
    "KLDiv-T3": lambda: KLDiv(temperature=3.0),
    "KLDiv-T2-Ts0.5": lambda: KLDiv(temperature=2.0, student_temperature=0.5),
    "ListNet": ListNet,
    "ListNet-T0.5-Ts2": lambda: ListNet(temperature=0.5, student_temperature=2.0),
    "Hinge": Hinge,
    "Hinge-gap": lambda: Hinge(margin=0.5, min_gap=1.0),
    "ConstantMarginMSE": ConstantMarginMSE,
    "SupervisedMarginMSE": SupervisedMarginMSE,
    "ListMLE": ListMLE,
    "PListMLE": PListMLE,
    "InfoNCE": InfoNCE,
    "InfoNCE-T0.1": lambda: InfoNCE(temperature=0.1),
    "PearsonCorrelation": PearsonCorrelation,
    "ApproxNDCG": ApproxNDCG,
    "ApproxNDCG-T0.5-G2": lambda: ApproxNDCG(temperature=0.5, gain_temperature=2.0),
    "ApproxMRR": ApproxMRR,
    "ApproxRankMSE": ApproxRankMSE,
    "ApproxRankMSE-log2": lambda: ApproxRankMSE(discount="log2"),
    "ApproxRankMSE-reciprocal": lambda: ApproxRankMSE(temperature=0.5, discount="reciprocal"),
    "BCE": BCE,
    "BCE-T2": lambda: BCE(temperature=2.0),
    "GradedCE": GradedCE,
    "GradedCE-G2": lambda: GradedCE(max_grade=2, spacing=1.5),
    "RankNet": RankNet,
    "RankNet-weighted": lambda: RankNet(sigma=2.0, teacher_weighted=True),
    "LambdaLoss": LambdaLoss,
    "LambdaLoss-k2": lambda: LambdaLoss(k=2, temperature=0.5),
    "MSE": PointwiseMSE,
    "HardLabels-bce": lambda: HardLabels("bce"),
    "HardLabels-listwise": lambda: HardLabels("listwise_ce"),
    "HardLabels-listnet": lambda: HardLabels("listnet"),
    "Mixture": lambda: build_loss("MarginMSE", hard_label_weight=0.3, hard_label_kind="listwise_ce"),
}
NOT_SHIFT_INVARIANT = {"MSE", "BCE", "BCE-T2", "GradedCE", "GradedCE-G2", "HardLabels-bce"}
SHIFT_INVARIANT = [name for name in CONFIGS if name not in NOT_SHIFT_INVARIANT]

# The 2x3 example computed by hand below.
S = [[1.0, 0.5, -1.0], [0.2, 0.4, 0.0]]
T = [[2.0, 0.0, -1.0], [1.0, 0.5, 0.5]]
Y = [[2.0, 0.0, 1.0], [0.0, 1.0, 0.0]]


def tensors(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def value(loss: torch.nn.Module, student=S, teacher=T, labels=Y) -> float:
    s, t = tensors(student), tensors(teacher)
    return float(loss(s, t, torch.ones_like(s, dtype=torch.bool), tensors(labels)))


def softmax(xs: list[float]) -> list[float]:
    exps = [math.exp(x) for x in xs]
    return [e / sum(exps) for e in exps]


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def random_batch(seed: int = 0):
    """5 groups of up to 4 candidates with 4, 3, 2, 1 and 0 real ones."""
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    teacher = 3 * torch.randn(5, 4, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 3, (5, 4), generator=gen).double()
    labels[:, 0] = 2.0  # column 0 is the positive
    lengths = [4, 3, 2, 1, 0]
    mask = torch.arange(4)[None, :] < torch.tensor(lengths)[:, None]
    return student, teacher, mask, labels, lengths


def loss_and_grad(loss, student, teacher, mask, labels):
    student = student.clone().requires_grad_(True)
    out = loss(student, teacher, mask, labels)
    out.backward()
    return out.detach(), student.grad


# ---- hand computations on the 2x3 example ----------------------------------------------

def test_mse_by_hand():
    row0 = ((1 - 2) ** 2 + (0.5 - 0) ** 2 + (-1 + 1) ** 2) / 3
    row1 = ((0.2 - 1) ** 2 + (0.4 - 0.5) ** 2 + (0 - 0.5) ** 2) / 3
    assert value(PointwiseMSE()) == pytest.approx((row0 + row1) / 2)


def test_margin_mse_by_hand():
    # row 0: student margins 0.5, 2.0; teacher margins 2.0, 3.0
    row0 = ((0.5 - 2.0) ** 2 + (2.0 - 3.0) ** 2) / 2
    # row 1: student margins -0.2, 0.2; teacher margins 0.5, 0.5
    row1 = ((-0.2 - 0.5) ** 2 + (0.2 - 0.5) ** 2) / 2
    assert value(MarginMSE()) == pytest.approx((row0 + row1) / 2)  # 0.9575


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kldiv_by_hand(temperature):
    rows = []
    for s, t in zip(S, T, strict=True):
        p = softmax([x / temperature for x in t])
        q = softmax([x / temperature for x in s])
        rows.append(temperature**2 * sum(pj * math.log(pj / qj) for pj, qj in zip(p, q, strict=True)))
    assert value(KLDiv(temperature=temperature)) == pytest.approx(mean(rows))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_listnet_by_hand(temperature):
    rows = []
    for s, t in zip(S, T, strict=True):
        p, q = softmax([x / temperature for x in t]), softmax(s)
        rows.append(-sum(pj * math.log(qj) for pj, qj in zip(p, q, strict=True)))
    assert value(ListNet(temperature=temperature)) == pytest.approx(mean(rows))


def test_ranknet_by_hand():
    def nll(d: float) -> float:  # -log sigmoid(d)
        return math.log(1 + math.exp(-d))

    # teacher-ordered pairs: row 0 (0,1) (0,2) (1,2); row 1 (0,1) (0,2), the tie (1,2) is no pair
    row0 = mean([nll(1.0 - 0.5), nll(1.0 + 1.0), nll(0.5 + 1.0)])
    row1 = mean([nll(0.2 - 0.4), nll(0.2 - 0.0)])
    assert value(RankNet()) == pytest.approx((row0 + row1) / 2)

    # min_gap 0.6 drops both pairs of row 1 (teacher gaps 0.5), so row 1 leaves the mean
    assert value(RankNet(min_gap=0.6)) == pytest.approx(row0)

    def w(gap: float) -> float:  # teacher confidence margin 2 sigmoid(gap) - 1
        return 2 / (1 + math.exp(-gap)) - 1

    weighted0 = mean([w(2) * nll(0.5), w(3) * nll(2.0), w(1) * nll(1.5)])
    weighted1 = mean([w(0.5) * nll(-0.2), w(0.5) * nll(0.2)])
    assert value(RankNet(teacher_weighted=True)) == pytest.approx((weighted0 + weighted1) / 2)


def lambda_loss_row(s, t, temperature=1.0, k=None, mu=10.0, sigma=1.0) -> float:
    """LambdaLoss (NDCG-Loss2++) of one query, written out with loops."""
    n = len(s)
    k = k or n
    gains = softmax([x / temperature for x in t])
    order = sorted(range(n), key=lambda j: -s[j])  # student ranking

    def inv_d(r):  # 1 / log2(1 + r), r = 1-based rank
        return 1 / math.log2(1 + r)

    ideal = sum(g * inv_d(r + 1) for r, g in enumerate(sorted(gains, reverse=True)[:k]))
    g = [gains[j] / ideal for j in order]
    ranked = [s[j] for j in order]
    terms = []
    for a in range(n):
        for b in range(n):
            if a != b and g[a] > g[b] and (a < k or b < k):
                delta = abs(inv_d(abs(a - b)) - inv_d(abs(a - b) + 1))
                lambda_rank = abs(inv_d(a + 1) - inv_d(b + 1))
                weight = (mu * delta + lambda_rank) * abs(g[a] - g[b])
                terms.append(-weight * math.log2(1 / (1 + math.exp(-sigma * (ranked[a] - ranked[b])))))
    return mean(terms)


@pytest.mark.parametrize("params", [{}, {"k": 1}, {"temperature": 0.5, "mu": 0.0, "sigma": 2.0}])
def test_lambda_loss_by_hand(params):
    expected = mean([lambda_loss_row(s, t, **params) for s, t in zip(S, T, strict=True)])
    assert value(LambdaLoss(**params)) == pytest.approx(expected)


def test_lambda_loss_prefers_the_teacher_order():
    teacher = [[3.0, 2.0, 1.0, 0.0]]
    agree = value(LambdaLoss(), [[3.0, 2.0, 1.0, 0.0]], teacher, [[0.0] * 4])
    reversed_ = value(LambdaLoss(), [[0.0, 1.0, 2.0, 3.0]], teacher, [[0.0] * 4])
    assert agree < reversed_


def test_hard_labels_by_hand():
    def bce(s: float, y: float) -> float:
        return y * math.log(1 + math.exp(-s)) + (1 - y) * math.log(1 + math.exp(s))

    rows = [
        mean([bce(s, float(y > 0)) for s, y in zip(srow, yrow, strict=True)])
        for srow, yrow in zip(S, Y, strict=True)
    ]
    assert value(HardLabels("bce")) == pytest.approx(mean(rows))

    rows = []
    for srow, yrow in zip(S, Y, strict=True):
        q = softmax(srow)
        rows.append(-sum(y / sum(yrow) * math.log(qj) for y, qj in zip(yrow, q, strict=True)))
    assert value(HardLabels("listwise_ce")) == pytest.approx(mean(rows))

    rows = []
    for srow, yrow in zip(S, Y, strict=True):
        q = softmax(srow)
        rows.append(-sum(p * math.log(qj) for p, qj in zip(softmax(yrow), q, strict=True)))
    assert value(HardLabels("listnet")) == pytest.approx(mean(rows))


def test_listnet_labels_ask_for_a_finite_margin():
    """One positive among n: listwise_ce keeps pushing the positive up, listnet stops at a gap of 1
    (its target is softmax(labels), sentence-transformers' ListNetLoss on labels)."""
    labels = [[1.0, 0.0, 0.0, 0.0]]

    def slope(kind: str, gap: float) -> float:
        student = torch.tensor([[gap, 0.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
        HardLabels(kind)(student, torch.zeros_like(student), torch.ones_like(student, dtype=torch.bool),
                         tensors(labels)).backward()
        return float(student.grad[0, 0])

    assert slope("listnet", 1.0) == pytest.approx(0.0, abs=1e-12)
    assert slope("listnet", 3.0) > 0  # past the gap, listnet pulls the positive back down
    assert slope("listwise_ce", 3.0) < 0


def test_mixture_is_the_weighted_sum():
    mixture = build_loss("KLDiv", temperature=2.0, hard_label_weight=0.25)
    assert isinstance(mixture, Mixture)
    expected = value(KLDiv(temperature=2.0)) + 0.25 * value(HardLabels("bce"))
    assert value(mixture) == pytest.approx(expected)
    s, t = tensors(S), tensors(T)
    parts = mixture.parts(s, t, torch.ones_like(s, dtype=torch.bool), tensors(Y))
    assert list(parts) == ["KLDiv", "HardLabels"]
    assert mixture.get_config_dict() == {
        "name": "Mixture",
        "components": [
            {"weight": 1.0, "name": "KLDiv", "temperature": 2.0, "student_temperature": 2.0},
            {"weight": 0.25, "name": "HardLabels", "kind": "bce"},
        ],
    }

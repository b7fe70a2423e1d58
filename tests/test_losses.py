"""The math of the distillation losses: hand-computed values, masking, shift invariance."""

from __future__ import annotations

import math

import pytest
import torch

from distill.core.errors import ConfigError
from distill.training.losses import (
    BCE,
    IN_BATCH,
    LOSSES,
    ApproxMRR,
    ApproxNDCG,
    ApproxRankMSE,
    ConstantMarginMSE,
    GradedCE,
    HardLabels,
    Hinge,
    InBatchCE,
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
    ScoreBasedInBatchCE,
    SupervisedMarginMSE,
    build_loss,
    describe_losses,
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


# ---- registry, configs and errors -------------------------------------------------------

def test_registry_uses_the_field_names():
    assert set(LOSSES) == {
        "MSE", "BCE", "GradedCE",
        "MarginMSE", "RankNet", "Hinge", "ConstantMarginMSE", "SupervisedMarginMSE",
        "KLDiv", "ListNet", "LambdaLoss", "ListMLE", "PListMLE", "InfoNCE", "PearsonCorrelation",
        "ApproxNDCG", "ApproxMRR", "ApproxRankMSE",
        "InBatchCE", "ScoreBasedInBatchCE",
    }
    assert {name for name, cls in LOSSES.items() if cls.signature == IN_BATCH} == {"InBatchCE", "ScoreBasedInBatchCE"}
    assert isinstance(build_loss("kldiv", temperature=2.0), KLDiv)
    assert isinstance(build_loss("mse"), PointwiseMSE)
    assert build_loss("LAMBDALOSS", k=10).get_config_dict() == {
        "name": "LambdaLoss", "temperature": 1.0, "k": 10, "sigma": 1.0, "mu": 10.0,
    }
    for cls in (*LOSSES.values(), HardLabels):
        assert "@" in cls.citation and cls.__doc__ and cls.formula and cls.when_to_use
    for name in LOSSES:
        assert build_loss(name).get_config_dict()["name"] == name


def test_unknown_loss_lists_every_option():
    with pytest.raises(ConfigError) as info:
        build_loss("ListMLX")
    for key in LOSSES:
        assert key in str(info.value)


def test_bad_parameters_are_config_errors():
    with pytest.raises(ConfigError, match="temperature"):
        build_loss("KLDiv", temprature=2.0)
    with pytest.raises(ConfigError, match="temperature"):
        build_loss("ListNet", temperature=0.0)
    with pytest.raises(ConfigError, match="bce, listwise_ce"):
        build_loss("MarginMSE", hard_label_weight=1.0, hard_label_kind="hinge")
    with pytest.raises(ConfigError, match="hard_label_weight"):
        build_loss("MarginMSE", hard_label_weight=-1.0)
    with pytest.raises(ConfigError, match="k must be"):
        LambdaLoss(k=0)


def test_hard_labels_need_labels():
    student, teacher, mask, _, _ = random_batch()
    with pytest.raises(ConfigError, match="needs qrels labels"):
        build_loss("KLDiv", hard_label_weight=0.5)(student, teacher, mask)


def test_wrong_inputs_are_rejected():
    student, teacher, mask, _, _ = random_batch()
    with pytest.raises(ValueError, match="teacher shape"):
        KLDiv()(student, teacher[:, :3], mask)
    with pytest.raises(ValueError, match="bool"):
        KLDiv()(student, teacher, mask.double())


def test_check_group_size():
    with pytest.raises(ConfigError, match="MarginMSE needs at least one negative per group"):
        build_loss("MarginMSE").check_group_size(1)
    build_loss("MarginMSE").check_group_size(2)
    for name in ("KLDiv", "ListNet", "RankNet", "LambdaLoss"):
        with pytest.raises(ConfigError, match=name):
            build_loss(name).check_group_size(1)
    build_loss("MSE", hard_label_weight=1.0).check_group_size(1)
    with pytest.raises(ConfigError, match="HardLabels"):
        build_loss("MSE", hard_label_weight=1.0, hard_label_kind="listwise_ce").check_group_size(1)


def test_describe_losses_covers_every_loss():
    rows = describe_losses()
    assert [row["name"] for row in rows] == [*LOSSES, "HardLabels"]
    assert all(row["formula"] and row["when_to_use"] and row["family"] for row in rows)
    by_name = {row["name"]: row for row in rows}
    assert by_name["ScoreBasedInBatchCE"]["signature"] == "in_batch"
    assert by_name["KLDiv"]["parameters"] == "temperature=1.0, student_temperature=None"
    assert by_name["MarginMSE"]["parameters"] == ""


def test_docs_loss_table_is_generated_from_the_registry():
    """docs/losses.md is what `python -m distill.training.losses.describe` writes; regenerate it when this fails."""
    from distill.training.losses.describe import DOC, main, render_markdown

    assert DOC.read_text(encoding="utf-8") == render_markdown()
    assert main(["--check"]) == 0
    for row in describe_losses():
        assert f"`{row['name']}`" in render_markdown()


def test_describe_check_fails_on_drift(tmp_path):
    from distill.training.losses.describe import main

    out = tmp_path / "losses.md"
    assert main(["--check", "--out", str(out)]) == 1
    assert main(["--out", str(out)]) == 0
    assert main(["--check", "--out", str(out)]) == 0
    out.write_text(out.read_text().replace("ListMLE", "ListMLX"))
    assert main(["--check", "--out", str(out)]) == 1


def test_train_student_help_lists_the_registry():
    from typer.testing import CliRunner

    from distill.app.cli import app, register_commands

    register_commands()
    result = CliRunner().invoke(app, ["train-student", "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
    assert result.exit_code == 0
    help_text = " ".join(result.output.split())
    for name in LOSSES:
        assert name in help_text


# ---- the wider catalogue: hand computations on the 2x3 example ---------------------------

def nll_sigmoid(x: float) -> float:  # -log sigmoid(x)
    return math.log1p(math.exp(-x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def teacher_pairs(row: list[float]) -> list[tuple[int, int]]:
    return [(i, j) for i in range(len(row)) for j in range(len(row)) if row[i] > row[j]]


def test_bce_by_hand():
    for temperature in (1.0, 2.0):
        rows = []
        for s, t in zip(S, T, strict=True):
            p = [sigmoid(x / temperature) for x in t]
            rows.append(mean([pj * nll_sigmoid(sj) + (1 - pj) * nll_sigmoid(-sj) for sj, pj in zip(s, p, strict=True)]))
        assert value(BCE(temperature=temperature)) == pytest.approx(mean(rows))


def graded_ce_doc(s: float, grade: int, max_grade: int, spacing: float) -> float:
    """-log P(y = grade) of the cumulative-logit model, from the probabilities themselves."""
    theta = [spacing * (k - (max_grade - 1) / 2) for k in range(max_grade)]
    above = [1.0] + [sigmoid(s - th) for th in theta] + [0.0]  # P(y > k - 1) for k = 0..G+1
    return -math.log(above[grade] - above[grade + 1])


@pytest.mark.parametrize("max_grade,spacing", [(1, 2.0), (2, 2.0), (3, 0.7)])
def test_graded_ce_by_hand(max_grade, spacing):
    rows = [
        mean([graded_ce_doc(sj, min(int(yj), max_grade), max_grade, spacing) for sj, yj in zip(s, y, strict=True)])
        for s, y in zip(S, Y, strict=True)
    ]
    assert value(GradedCE(max_grade=max_grade, spacing=spacing)) == pytest.approx(mean(rows))


def test_graded_ce_with_two_grades_is_bce_on_relevance():
    assert value(GradedCE(max_grade=1)) == pytest.approx(value(HardLabels("bce")))


def test_graded_ce_fits_interior_grades_between_their_thresholds():
    """Grade 1 of 0..2 (thresholds -1, +1) is most likely at s = 0; grade 2 keeps rising with s."""
    loss = GradedCE(max_grade=2, spacing=2.0)

    def at(s: float, grade: float) -> float:
        return value(loss, [[s]], [[0.0]], [[grade]])

    assert at(0.0, 1) < min(at(-0.5, 1), at(0.5, 1))
    assert at(0.0, 1) == pytest.approx(-math.log(sigmoid(1) - sigmoid(-1)))
    assert at(3.0, 2) < at(1.0, 2) < at(-1.0, 2)
    assert at(-3.0, 0) < at(-1.0, 0) < at(1.0, 0)
    assert at(5.0, 7) == pytest.approx(at(5.0, 2))  # grades above G count as G


def test_hinge_by_hand():
    rows = []
    for s, t in zip(S, T, strict=True):
        rows.append(mean([max(0.0, 1.0 - (s[i] - s[j])) for i, j in teacher_pairs(t)]))
    assert value(Hinge()) == pytest.approx(mean(rows))
    # margin 0.5, min_gap 1: row 0 keeps the teacher gaps 2 and 3 (not 1), row 1 has none
    row0 = mean([max(0.0, 0.5 - (1.0 - 0.5)), max(0.0, 0.5 - (1.0 + 1.0))])
    assert value(Hinge(margin=0.5, min_gap=1.0)) == pytest.approx(row0)


def test_constant_margin_mse_by_hand():
    rows = [mean([((s[i] - s[j]) - 0.5) ** 2 for i, j in teacher_pairs(t)]) for s, t in zip(S, T, strict=True)]
    assert value(ConstantMarginMSE(margin=0.5)) == pytest.approx(mean(rows))
    # two documents: zero exactly when the student puts the teacher's winner `margin` ahead
    assert value(ConstantMarginMSE(margin=0.5), [[0.2, 0.7]], [[-1.0, 3.0]], [[0.0, 0.0]]) == pytest.approx(0.0)


def test_supervised_margin_mse_by_hand():
    rows = []
    for s, y in zip(S, Y, strict=True):
        rows.append(mean([((s[i] - s[j]) - (y[i] - y[j])) ** 2 for i, j in teacher_pairs(y)]))
    assert value(SupervisedMarginMSE()) == pytest.approx(mean(rows))


@pytest.mark.parametrize("t_teacher,t_student", [(1.0, 1.0), (2.0, 0.5), (0.5, 3.0)])
def test_kldiv_and_listnet_with_two_temperatures_by_hand(t_teacher, t_student):
    kl_rows, ce_rows = [], []
    for s, t in zip(S, T, strict=True):
        p = softmax([x / t_teacher for x in t])
        q = softmax([x / t_student for x in s])
        kl_rows.append(t_teacher * t_student * sum(pj * math.log(pj / qj) for pj, qj in zip(p, q, strict=True)))
        ce_rows.append(-sum(pj * math.log(qj) for pj, qj in zip(p, q, strict=True)))
    assert value(KLDiv(temperature=t_teacher, student_temperature=t_student)) == pytest.approx(mean(kl_rows))
    assert value(ListNet(temperature=t_teacher, student_temperature=t_student)) == pytest.approx(mean(ce_rows))


def plackett_luce_terms(s: list[float], t: list[float]) -> list[float]:
    """-log P of each step of the teacher's order under the student's scores."""
    order = sorted(range(len(t)), key=lambda j: -t[j])
    return [-(s[order[i]] - math.log(sum(math.exp(s[k]) for k in order[i:]))) for i in range(len(order))]


def test_listmle_and_plistmle_by_hand():
    rows = [sum(plackett_luce_terms(s, t)) for s, t in zip(S, T, strict=True)]
    assert value(ListMLE()) == pytest.approx(mean(rows))
    rows = []
    for s, t in zip(S, T, strict=True):
        n = len(s)
        alpha = [2 ** (n - i) - 1 for i in range(1, n + 1)]
        rows.append(sum(a / sum(alpha) * x for a, x in zip(alpha, plackett_luce_terms(s, t), strict=True)))
    assert value(PListMLE()) == pytest.approx(mean(rows))


def test_plistmle_weights_survive_long_lists():
    """2^(n - i) overflows float32 past n = 128; the normalised weights must not."""
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 300, generator=gen), torch.randn(2, 300, generator=gen)
    out = PListMLE()(student.requires_grad_(True), teacher, torch.ones(2, 300, dtype=torch.bool))
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(student.grad).all()


def test_infonce_by_hand():
    for tau in (1.0, 0.1):
        rows = []
        for s, t in zip(S, T, strict=True):
            top = max(range(len(t)), key=lambda j: t[j])  # row 1: the teacher's top-1 is column 0
            rows.append(-math.log(softmax([x / tau for x in s])[top]))
        assert value(InfoNCE(temperature=tau)) == pytest.approx(mean(rows))


def test_pearson_by_hand():
    rows = []
    for s, t in zip(S, T, strict=True):
        ms, mt = mean(s), mean(t)
        cov = sum((a - ms) * (b - mt) for a, b in zip(s, t, strict=True))
        r = cov / math.sqrt(sum((a - ms) ** 2 for a in s) * sum((b - mt) ** 2 for b in t))
        rows.append(1 - r)
    assert value(PearsonCorrelation()) == pytest.approx(mean(rows))
    # a teacher without spread has no correlation: its row leaves the mean
    assert value(PearsonCorrelation(), S, [T[0], [1.0, 1.0, 1.0]]) == pytest.approx(rows[0])


def approx_ranks(s: list[float], temperature: float) -> list[float]:
    return [1 + sum(sigmoid((s[k] - s[j]) / temperature) for k in range(len(s)) if k != j) for j in range(len(s))]


@pytest.mark.parametrize("temperature,gain_temperature", [(1.0, 1.0), (0.5, 2.0)])
def test_approx_ndcg_by_hand(temperature, gain_temperature):
    rows = []
    for s, t in zip(S, T, strict=True):
        gains = softmax([x / gain_temperature for x in t])
        ranks = approx_ranks(s, temperature)
        dcg = sum(g / math.log2(1 + r) for g, r in zip(gains, ranks, strict=True))
        ideal = sum(g / math.log2(2 + i) for i, g in enumerate(sorted(gains, reverse=True)))
        rows.append(1 - dcg / ideal)
    loss = ApproxNDCG(temperature=temperature, gain_temperature=gain_temperature)
    assert value(loss) == pytest.approx(mean(rows))


def test_approx_mrr_by_hand():
    rows = []
    for s, t in zip(S, T, strict=True):
        top = max(range(len(t)), key=lambda j: t[j])
        rows.append(1 - 1 / approx_ranks(s, 0.5)[top])
    assert value(ApproxMRR(temperature=0.5)) == pytest.approx(mean(rows))


@pytest.mark.parametrize("discount", [None, "log2", "reciprocal"])
def test_approx_rank_mse_by_hand(discount):
    rows = []
    for s, t in zip(S, T, strict=True):
        order = sorted(range(len(t)), key=lambda j: -t[j])  # stable: the tie in row 1 keeps column order
        target = {j: r + 1 for r, j in enumerate(order)}
        weight = {None: lambda r: 1.0, "log2": lambda r: 1 / math.log2(1 + r), "reciprocal": lambda r: 1 / r}[discount]
        ranks = approx_ranks(s, 1.0)
        rows.append(mean([weight(target[j]) * (ranks[j] - target[j]) ** 2 for j in range(len(s))]))
    assert value(ApproxRankMSE(discount=discount)) == pytest.approx(mean(rows))


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

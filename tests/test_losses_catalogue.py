"""The catalogue of distillation losses: the registry, its configs, errors and docs table, and the wider
catalogue's values computed by hand on the 2x3 example of test_losses."""

from __future__ import annotations

import math

import pytest
import torch
from test_losses import S, T, Y, mean, random_batch, softmax, value

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
    InfoNCE,
    KLDiv,
    LambdaLoss,
    ListMLE,
    ListNet,
    PearsonCorrelation,
    PListMLE,
    PointwiseMSE,
    SupervisedMarginMSE,
    build_loss,
    describe_losses,
)

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

"""Training's ``precision="auto"``: bf16 on a CPU only when measured clearly faster than fp32.

Timings are injected (no timed assertions); the real timing function runs once on tiny models
to check it leaves the model, its gradients and the RNG as they were.
"""

from __future__ import annotations

import json

import pytest
import torch

from distill import train_precision
from distill.training.groups import Group, GroupConfig
from distill.training.precision import MIN_SPEEDUP, choose_train_precision, step_seconds


def _groups(n: int = 2) -> list[Group]:
    return [Group(qid=f"q{i}", query="what cells grow", docids=["a", "b"], docs=["cells grow fast", "rocks"],
                  teacher=[1.0, 0.0], labels=[1.0, 0.0]) for i in range(n)]


@pytest.fixture
def bf16_cpu(monkeypatch):
    """A CPU with native bf16, and fake step timings ``{precision: seconds}`` set by the test."""
    timings: dict[str, float] = {}
    monkeypatch.setattr(train_precision, "native_precisions", lambda device_type: ("bf16",))
    monkeypatch.setattr(train_precision.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(train_precision, "step_seconds", lambda model, sample, precision: timings[precision])
    return timings


@pytest.mark.parametrize(("bf16_seconds", "chosen"), [(1.5, "fp32"), (1.0, "fp32"), (1 / (MIN_SPEEDUP - 0.05), "fp32"),
                                                      (1 / (MIN_SPEEDUP + 0.05), "bf16"), (0.5, "bf16")])
def test_auto_keeps_bf16_only_when_clearly_faster_than_fp32(bf16_cpu, bf16_seconds, chosen):
    bf16_cpu.update(fp32=1.0, bf16=bf16_seconds)
    choice = choose_train_precision("auto", torch.nn.Linear(2, 1), _groups())
    assert choice.chosen == chosen
    assert choice.cpu_seconds == {"fp32": 1.0, "bf16": round(bf16_seconds, 4)}  # recorded either way


def test_an_explicit_precision_or_a_cpu_without_bf16_is_not_timed(monkeypatch):
    monkeypatch.setattr(train_precision, "step_seconds", lambda *a: pytest.fail("timed"))
    monkeypatch.setattr(train_precision.torch.cuda, "is_available", lambda: False)
    assert choose_train_precision("bf16", torch.nn.Linear(2, 1), _groups()).chosen == "bf16"
    monkeypatch.setattr(train_precision, "native_precisions", lambda device_type: ())
    assert choose_train_precision("auto", torch.nn.Linear(2, 1), _groups()).chosen == "fp32"


@pytest.mark.isa  # real fp32 and bf16 steps: bf16 is native on AVX-512-BF16/AMX, emulated on AVX2
@pytest.mark.parametrize("kind", ["cross-encoder", "bi-encoder"])
def test_a_timed_step_leaves_model_gradients_and_rng_as_they_were(kind, tiny_cross_encoder, tiny_bi_encoder):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.cross_encoder import CrossEncoder

    model = CrossEncoder(str(tiny_cross_encoder)) if kind == "cross-encoder" else SentenceTransformer(
        str(tiny_bi_encoder))
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    for precision in ("fp32", "bf16"):
        assert step_seconds(model, _groups(), precision) > 0
    assert torch.equal(torch.rand(3), expected)
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.isa
def test_a_student_trained_in_bf16_on_cpu_records_it(tiny_beir, tiny_cross_encoder, tmp_path, monkeypatch):
    """``--precision bf16`` works on a CPU (transformers needs ``use_cpu`` there) and is recorded: on every CPU,
    natively or emulated, and on a CUDA machine too, which is made to train on its CPU here."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    from distill.core.schema import DOCID, QID, SCORE
    from distill.data.beir import load_beir
    from distill.data.bm25 import bm25_run
    from distill.training.trainer import TrainConfig
    from students.cross_encoder import train_cross_encoder_student

    dataset = load_beir(tiny_beir, "train")
    scores = bm25_run(dataset, 4).select(QID, DOCID, SCORE)  # BM25 as the teacher: any scores will do
    out = train_cross_encoder_student(
        dataset, scores, tmp_path / "student",
        init=str(tiny_cross_encoder), group_config=GroupConfig(n_negatives=2),
        train_config=TrainConfig(epochs=1, batch_size=4, max_length=32, precision="bf16",
                                 checkpoints_dir=str(tmp_path / "ckpt")),
        loss_name="MarginMSE", teacher_fingerprint={"kind": "bm25"})
    recorded = json.loads((out / "distill.json").read_text())["precision"]
    assert recorded["chosen"] == "bf16" and recorded["requested"] == "bf16"

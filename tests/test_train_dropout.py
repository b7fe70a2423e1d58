"""``--dropout``: the neural students' training dropout, attention's included, set on any architecture."""

from __future__ import annotations

import pytest
import torch

from distill.core.errors import ConfigError
from distill.training.config import TrainConfig


def _two_training_passes(model) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits of one batch scored twice in training mode (dropout draws anew each time)."""
    features = model.tokenizer([["a query", "some document text here"]] * 4, padding=True, return_tensors="pt")
    model.model.train()
    with torch.no_grad():
        return model.model(**features).logits, model.model(**features).logits


def test_dropout_zero_makes_training_passes_deterministic_attention_included(tiny_cross_encoder):
    from sentence_transformers.cross_encoder import CrossEncoder

    from distill.training.trainer import set_dropout

    model = CrossEncoder(str(tiny_cross_encoder))
    first, second = _two_training_passes(model)
    assert not torch.equal(first, second)  # the model's own dropout draws random masks
    set_dropout(model, 0.0)
    first, second = _two_training_passes(model)
    assert torch.equal(first, second)
    attention = [m for name, m in model.model.named_modules() if name.endswith("attention.self")]
    assert attention and all(m.dropout.p == 0.0 for m in attention)  # what BERT passes to its attention kernel


@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_a_dropout_outside_zero_to_one_is_refused(p):
    with pytest.raises(ConfigError, match="dropout"):
        TrainConfig(dropout=p)


def test_train_teacher_takes_the_setting_too():
    from teachers.train import TeacherTrainConfig

    assert TeacherTrainConfig.from_settings(dropout=0.0).train.dropout == 0.0
    assert TeacherTrainConfig.from_settings().train.dropout is None  # the model's own

"""Cross-encoder students: a smaller cross-encoder trained on the teacher's cached scores.

The student starts from any Hugging Face checkpoint (a fresh 1-label head on top) or from
the teacher itself with only its first N encoder layers: transformers builds the model
from the teacher's config with ``num_hidden_layers=N`` and loads the teacher's weights by
name, so embeddings, layers 0..N-1, pooler and classification head are the teacher's own
and the deeper layers are simply not loaded. The result is a folder
``sentence_transformers.CrossEncoder(path)`` loads, with a ``distill.json`` manifest.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from distill.data import Dataset
from distill.errors import ConfigError
from distill.io import atomic_dir
from distill.manifest import write_manifest
from students.groups import GroupConfig, build_groups, split_groups

if TYPE_CHECKING:
    from students.training import TrainConfig

log = logging.getLogger(__name__)

KIND = "cross-encoder-student"


def init_cross_encoder(init: str, *, layers: int | None = None, max_length: int = 256,
                       trust_remote_code: bool = False):
    """A 1-label ``CrossEncoder`` from ``init``; with ``layers``, ``init``'s first ``layers`` layers only."""
    from sentence_transformers.cross_encoder import CrossEncoder
    from transformers import AutoConfig

    config_kwargs = None
    if layers is not None:
        config = AutoConfig.from_pretrained(init, trust_remote_code=trust_remote_code)
        depth = getattr(config, "num_hidden_layers", None)
        if depth is None:
            raise ConfigError(f"{init}: its config has no num_hidden_layers, so its layers cannot be truncated")
        if not 1 <= layers < depth:
            raise ConfigError(f"--layers must be between 1 and {depth - 1} for a teacher with {depth} layers, "
                              f"got {layers}")
        if getattr(config, "num_labels", 1) != 1:
            raise ConfigError(f"{init} has {config.num_labels} output labels; initialising from a teacher needs "
                              "a 1-label cross-encoder head to copy")
        log.info("student: the teacher's embeddings, first %d of %d layers and head", layers, depth)
        config_kwargs = {"num_hidden_layers": layers}
    return CrossEncoder(init, num_labels=1, max_length=max_length, config_kwargs=config_kwargs,
                        trust_remote_code=trust_remote_code)


def train_cross_encoder_student(
    dataset: Dataset,
    scores: pl.DataFrame,
    out: str | Path,
    *,
    init: str,
    init_from_teacher_layers: int | None = None,
    group_config: GroupConfig,
    train_config: TrainConfig,
    loss_name: str,
    loss_params: dict[str, Any] | None = None,
    hard_label_weight: float = 0.0,
    hard_label_kind: str = "bce",
    teacher_fingerprint: dict[str, Any] | None = None,
    trust_remote_code: bool = False,
) -> Path:
    """Distill the teacher ``scores`` (``qid, docid, score``) of ``dataset``'s queries into a
    cross-encoder saved at ``out`` (written atomically; checkpoints go to
    ``train_config.checkpoints_for(out)``). ``init`` is a model path or id; with
    ``init_from_teacher_layers=N`` it is the teacher, truncated to its first N layers."""
    from transformers import set_seed

    from students.losses import build_loss
    from students.training import CrossEncoderGroupLoss, fit, scores_summary

    out = Path(out)
    loss = build_loss(loss_name, hard_label_weight=hard_label_weight, hard_label_kind=hard_label_kind,
                      **(loss_params or {}))
    loss.check_group_size(group_config.group_size)
    groups = build_groups(dataset, scores, group_config, check_group_size=loss.check_group_size)
    train, valid = split_groups(groups, train_config.valid_fraction, train_config.seed)
    set_seed(train_config.seed)
    model = init_cross_encoder(init, layers=init_from_teacher_layers, max_length=train_config.max_length,
                               trust_remote_code=trust_remote_code)
    history = fit(model, CrossEncoderGroupLoss(model, loss), train, valid, train_config,
                  train_config.checkpoints_for(out))
    config = {"init": init, "init_from_teacher_layers": init_from_teacher_layers, "loss": loss.get_config_dict(),
              "group": asdict(group_config), "train": asdict(train_config)}
    with atomic_dir(out) as tmp:
        model.save_pretrained(str(tmp))
        write_manifest(tmp, KIND, config, teacher=teacher_fingerprint,
                       data=scores_summary(dataset, scores, train, valid), history=history)
    log.info("saved the cross-encoder student to %s", out)
    return out

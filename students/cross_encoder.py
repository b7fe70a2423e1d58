"""Cross-encoder students: a smaller cross-encoder trained on the teacher's cached scores.

The student starts from any Hugging Face checkpoint (a fresh 1-label head on top) or from
the teacher itself with only N of its encoder layers: transformers builds the model from
the teacher's config with ``num_hidden_layers=N`` and loads the teacher's weights by name
(layers 0..N-1, ``first``), or distill copies N evenly spaced layers ending with the last
(``spread``); embeddings, pooler and classification head are the teacher's own. The
result is a folder ``sentence_transformers.CrossEncoder(path)`` loads, with a
``distill.json`` manifest.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import polars as pl

from distill.core.errors import ConfigError
from distill.core.io import atomic_dir
from distill.core.manifest import write_manifest
from distill.core.outputs import check_folder_output
from distill.data.beir import Dataset
from distill.training.groups import GroupConfig, build_groups, split_groups

if TYPE_CHECKING:
    from torch import nn

    from distill.training.trainer import TrainConfig

log = logging.getLogger(__name__)

KIND = "cross-encoder-student"
# the layer index in a transformer weight name: "bert.encoder.layer.3.attention..." or "model.layers.3.mlp..."
_LAYER = re.compile(r"(^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")


LayerChoice = Literal["first", "spread"]


def teacher_layers(depth: int, n: int, choice: LayerChoice = "first") -> list[int]:
    """Which of a ``depth``-layer teacher's layers an ``n``-layer student starts from.

    ``first`` keeps layers ``0..n-1``. ``spread`` keeps ``n`` evenly spaced layers ending
    with the last one (the "skip" scheme of Patient-KD, Sun et al. 2019), so the pooler and
    head sit on the representation they were trained on.
    """
    if not 1 <= n < depth:
        raise ConfigError(f"--layers must be between 1 and {depth - 1} for a teacher with {depth} layers, got {n}")
    if choice == "first":
        return list(range(n))
    if choice == "spread":
        return [round((i + 1) * depth / n) - 1 for i in range(n)]
    raise ConfigError(f"the layer choice must be 'first' or 'spread', got {choice!r}")


def _layer_key(key: str, mapping: dict[int, int]) -> str | None:
    """``key`` of a teacher weight renamed to the student's layer numbering; None for a dropped layer."""
    match = _LAYER.search(key)
    if match is None:
        return key
    source = int(match.group(2))
    if source not in mapping:
        return None
    return f"{key[:match.start(2)]}{mapping[source]}{key[match.end(2):]}"


def init_cross_encoder(init: str, *, layers: int | None = None, choice: LayerChoice = "first",
                       max_length: int = 256, trust_remote_code: bool = False):
    """A 1-label ``CrossEncoder`` from ``init``; with ``layers``, only ``layers`` of ``init``'s
    encoder layers (picked by :func:`teacher_layers`), its embeddings, pooler and head."""
    from sentence_transformers.cross_encoder import CrossEncoder
    from transformers import AutoConfig

    if layers is None:
        return CrossEncoder(init, num_labels=1, max_length=max_length, trust_remote_code=trust_remote_code)
    config = AutoConfig.from_pretrained(init, trust_remote_code=trust_remote_code)
    depth = getattr(config, "num_hidden_layers", None)
    if depth is None:
        raise ConfigError(f"{init}: its config has no num_hidden_layers, so its layers cannot be truncated")
    picked = teacher_layers(depth, layers, choice)
    if getattr(config, "num_labels", 1) != 1:
        raise ConfigError(f"{init} has {config.num_labels} output labels; initialising from a teacher needs "
                          "a 1-label cross-encoder head to copy")
    log.info("student: the teacher's embeddings, layers %s of %d and head", picked, depth)
    student = CrossEncoder(init, num_labels=1, max_length=max_length, config_kwargs={"num_hidden_layers": layers},
                           trust_remote_code=trust_remote_code)
    if picked != list(range(layers)):
        # transformers loads layers 0..n-1 by name; other layers are copied here by renaming
        teacher = CrossEncoder(init, num_labels=1, trust_remote_code=trust_remote_code).model.state_dict()
        mapping = {source: target for target, source in enumerate(picked)}
        renamed = {new: value for key, value in teacher.items() if (new := _layer_key(key, mapping)) is not None}
        missing, _ = student.model.load_state_dict(renamed, strict=False)
        if missing:
            raise ConfigError(f"{init}: could not map the teacher's layers onto the student's: missing {missing[:3]}")
    return student


def train_cross_encoder_student(
    dataset: Dataset,
    scores: pl.DataFrame,
    out: str | Path,
    *,
    init: str,
    init_from_teacher_layers: int | None = None,
    layer_choice: LayerChoice = "first",
    group_config: GroupConfig,
    train_config: TrainConfig,
    loss_name: str | nn.Module,
    loss_params: dict[str, Any] | None = None,
    hard_label_weight: float = 0.0,
    hard_label_kind: str = "bce",
    teacher_fingerprint: dict[str, Any] | None = None,
    trust_remote_code: bool = False,
    overwrite: bool = False,
) -> Path:
    """Distill the teacher ``scores`` (``qid, docid, score``) of ``dataset``'s queries into a
    cross-encoder saved at ``out`` (written atomically; checkpoints go to
    ``train_config.checkpoints_for(out)``). ``init`` is a model path or id; with
    ``init_from_teacher_layers=N`` it is the teacher, cut to N layers chosen by ``layer_choice``
    (see :func:`teacher_layers`). ``out`` replaces only an earlier such student, unless ``overwrite``."""
    from transformers import set_seed

    from distill.training.losses import build_loss
    from distill.training.trainer import CrossEncoderGroupLoss, fit, scores_summary

    out = Path(out)
    check_folder_output(out, KIND, overwrite=overwrite)  # before training, not after
    # a loss object (students.train.train_student builds one) or a registered name
    loss = loss_name if not isinstance(loss_name, str) else build_loss(
        loss_name, hard_label_weight=hard_label_weight, hard_label_kind=hard_label_kind, **(loss_params or {}))
    loss.check_group_size(group_config.group_size)
    groups = build_groups(dataset, scores, group_config, check_group_size=loss.check_group_size)
    train, valid = split_groups(groups, train_config.valid_fraction, train_config.seed)
    set_seed(train_config.seed)
    model = init_cross_encoder(init, layers=init_from_teacher_layers, choice=layer_choice,
                               max_length=train_config.max_length, trust_remote_code=trust_remote_code)
    fitted = fit(model, CrossEncoderGroupLoss(model, loss), train, valid, train_config,
                 train_config.checkpoints_for(out))
    config = {"init": init, "init_from_teacher_layers": init_from_teacher_layers,
              "layer_choice": layer_choice if init_from_teacher_layers else None, "loss": loss.get_config_dict(),
              "group": asdict(group_config), "train": asdict(train_config)}
    with atomic_dir(out, kind=KIND, overwrite=overwrite) as tmp:
        model.save_pretrained(str(tmp))
        write_manifest(tmp, KIND, config, teacher=teacher_fingerprint,
                       data=scores_summary(dataset, scores, train, valid, out), history=fitted.history,
                       precision=fitted.precision.to_dict())
    log.info("saved the cross-encoder student to %s", out)
    return out

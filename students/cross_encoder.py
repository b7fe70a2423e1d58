"""Cross-encoder students: a smaller cross-encoder trained on the teacher's cached scores.

The student starts from any Hugging Face checkpoint (a fresh 1-label head on top) or from
the teacher itself with only N of its encoder layers: transformers builds the model from
the teacher's config with ``num_hidden_layers=N`` and loads the teacher's weights by name
(layers 0..N-1, ``first``), or distill copies N evenly spaced layers ending with the last
(``spread``); embeddings, pooler and classification head are the teacher's own. The
result is a folder ``sentence_transformers.CrossEncoder(path)`` loads, with a
``distill.json`` manifest, that :class:`CrossEncoderStudentRanker` loads as a ranker.
:class:`CrossEncoderStudent` is the kind ``cross-encoder`` of :mod:`students.student`; it trains
as every neural student does (:mod:`students.neural`).

Long documents: a student distilled from a cache scored by passages (``score-teacher --passages``,
:mod:`distill.inference.passages`) records its teacher's choice in ``distill.json`` (``passages``:
mode, window and stride, the window cut to the student's ``max_length`` where longer), and
:class:`CrossEncoderStudentRanker` scores by those passages when it loads the folder, so
``evaluate``, ``cascade build`` and ``serve`` score a long document as the teacher did without
being told. Training does not split documents: each training pair is the query and the document
truncated to the student's ``max_length``, as without passages, so the student learns the
teacher's per-document target (MaxP's best passage, wherever it lies) from the document's first
window only; where the best passage is further on, that target is one its input cannot show.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import polars as pl

from distill.core.errors import ConfigError
from distill.core.io import read_json
from distill.data.beir import Dataset
from distill.inference.passages import PassageConfig
from distill.training.groups import GroupConfig
from students.neural import NeuralStudent, named_loss
from teachers.cross_encoder import CrossEncoderTeacher

if TYPE_CHECKING:
    from torch import nn

    from distill.training.config import TrainConfig
    from distill.training.losses import DistillLoss

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


@dataclass
class CrossEncoderConfig:
    """A cross-encoder student's own options: whether it starts from some of its teacher's layers.

    A field's metadata holds its ``distill train-student`` help (:mod:`distill.app.options`).
    """

    layers: int | None = field(default=None, metadata={
        "min": 1, "help": "With --init-from-teacher: encoder layers to keep [required with it]."})
    layer_choice: LayerChoice = field(default="first", metadata={
        "help": "With --layers: first (layers 0..N-1) | spread (N evenly spaced, ending with the last)."})


class CrossEncoderStudent(NeuralStudent):
    """The cross-encoder student: query and document read together by one transformer with a 1-label head,
    started from a checkpoint (``init``) or from ``config.layers`` of its teacher's layers."""

    kind = "cross-encoder"
    output_kind = KIND
    config_type = CrossEncoderConfig

    def check_start(self, init: str | None, from_teacher: bool) -> None:
        if from_teacher == (init is not None):
            raise ConfigError("a cross-encoder student needs exactly one of --init PATH or "
                              "--init-from-teacher --layers N")
        if from_teacher != (self.config.layers is not None):
            raise ConfigError("--init-from-teacher and --layers N (the teacher layers to keep) go together")

    @property
    def starts_as_init(self) -> bool:
        return self.config.layers is None

    def continuing(self) -> CrossEncoderStudent:
        return type(self)(replace(self.config, layers=None), group_config=self.group_config,
                          train_config=self.train_config)

    def build_model(self, init: str, trust_remote_code: bool) -> Any:
        return init_cross_encoder(init, layers=self.config.layers, choice=self.config.layer_choice,
                                  max_length=self.train_config.max_length, trust_remote_code=trust_remote_code)

    def group_loss(self, model: Any, loss: DistillLoss) -> nn.Module:
        from distill.training.trainer import CrossEncoderGroupLoss

        return CrossEncoderGroupLoss(model, loss)

    def manifest_config(self) -> dict[str, Any]:
        layers = self.config.layers
        return {"init_from_teacher_layers": layers, "layer_choice": self.config.layer_choice if layers else None}

    def scoring_manifest(self, teacher_fingerprint: dict[str, Any] | None) -> dict[str, Any]:
        """The teacher's passages (see the module docstring), the window cut to the student's max_length."""
        recorded = (teacher_fingerprint or {}).get("passages")
        if not recorded:
            return {}
        passages = PassageConfig(**recorded).within(self.train_config.max_length)
        if passages.to_dict() != recorded:
            log.info("passages: the teacher's %s, cut to the student's max_length %d: %s", recorded,
                     self.train_config.max_length, passages.to_dict())
        return {"passages": passages.to_dict()}


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
    loss_name: str | DistillLoss,
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
    (see :func:`teacher_layers`). ``loss_name`` is a loss object or a registered name built with
    ``loss_params`` and a hard-label term. ``out`` replaces only an earlier such student, unless ``overwrite``."""
    student = CrossEncoderStudent(CrossEncoderConfig(init_from_teacher_layers, layer_choice),
                                  group_config=group_config, train_config=train_config)
    return student.fit_and_save(dataset, scores, out, init=init,
                                loss=named_loss(loss_name, loss_params, hard_label_weight, hard_label_kind),
                                teacher_fingerprint=teacher_fingerprint, trust_remote_code=trust_remote_code,
                                overwrite=overwrite)


class CrossEncoderStudentRanker(CrossEncoderTeacher):
    """A cross-encoder student's folder (``distill.json`` kind ``cross-encoder-student``) as a ranker: its
    1-label head's raw logit, scored as its teacher scores (batched by token budget, on torch or a graph
    runtime), so a student and its teacher rank, cascade and export alike. Long documents are scored by the
    passages its ``distill.json`` records (see the module docstring) unless ``passages`` is given."""

    def __init__(self, model_name_or_path: str | Path, *, passages: PassageConfig | dict[str, Any] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(model_name_or_path, passages=passages or recorded_passages(model_name_or_path), **kwargs)


def recorded_passages(folder: str | Path) -> PassageConfig | None:
    """The passages a student folder's ``distill.json`` records (None: it truncates documents)."""
    manifest = Path(folder) / "distill.json"
    body = read_json(manifest) if manifest.is_file() else None
    recorded = body.get("passages") if isinstance(body, dict) else None
    if recorded is None:
        return None
    try:
        return PassageConfig(**recorded)
    except (TypeError, ConfigError) as err:
        raise ConfigError(f"expected {{mode, tokens, stride}} as score-teacher's --passages records them, got "
                          f"{recorded!r} ({err})", path=manifest, field="passages") from None

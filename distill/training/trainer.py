"""Shared training plumbing over sentence-transformers' trainers.

The trainers (``CrossEncoderTrainer``, ``SentenceTransformerTrainer``) own the loop, the
optimizer and schedule, mixed precision, checkpoints, resume and best-model selection;
distill adds only:

- :class:`TrainConfig` (defined in the torch-free :mod:`distill.training.config`), the knobs a user
  sets, mapped onto the trainers' arguments;
- two loss adapters that turn a batch of groups (laid out by
  :func:`distill.training.groups.groups_to_hf_dataset`) into ``student[B, L]`` scores and call a
  distillation loss from :mod:`distill.training.losses` with ``teacher``, ``mask`` and ``labels``;
- :func:`fit`, which wires them together, with checkpoints that hold no pickle
  (:mod:`distill.training.checkpoints`).

Under ``torchrun`` the trainer trains with DistributedDataParallel (``batch_size`` is per rank) and
the precision is chosen on rank 0 and broadcast (:mod:`distill.training.distributed`).

Import this module lazily (it imports torch).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.core.errors import ConfigError
from distill.training.config import Precision, TrainConfig  # noqa: F401 (re-exported: TrainConfig's torch-free home)
from distill.training.distributed import on_main
from distill.training.groups import MASK_ROW, RELEVANCE_ROW, TEACHER_ROW, Group, groups_to_hf_dataset
from distill.training.precision import SAMPLE_GROUPS, TrainPrecision, choose_train_precision

log = logging.getLogger(__name__)


def _unpack(labels: torch.Tensor | list[torch.Tensor], device: torch.device):
    """``label [B, 3, L]`` (a list of ``[3, L]`` from the cross-encoder collator) → teacher, mask, relevance."""
    stacked = torch.stack(list(labels)) if isinstance(labels, (list, tuple)) else labels
    stacked = stacked.to(device)
    return stacked[:, TEACHER_ROW], stacked[:, MASK_ROW] > 0.5, stacked[:, RELEVANCE_ROW]


class CrossEncoderGroupLoss(nn.Module):
    """Loss for ``CrossEncoderTrainer``: score each (query, doc) pair of the groups, reshape to
    ``[B, L]`` and apply the distillation loss. Padding pairs never run through the model."""

    def __init__(self, model, loss: nn.Module) -> None:
        super().__init__()
        if getattr(loss, "signature", "group") != "group":
            raise ConfigError(f"{loss.name} is an in-batch loss: it scores every query against every document "
                              "of the batch, which only the bi-encoder student does cheaply; choose a group loss")
        self.model = model
        self.loss = loss

    def forward(self, inputs: list[list[str]], labels, prompt: str | None = None,
                task: str | None = None) -> torch.Tensor:
        queries, *doc_columns = inputs
        teacher, mask, relevance = _unpack(labels, self.model.device)
        valid = mask.tolist()
        pairs = [(query, column[b]) for b, query in enumerate(queries)
                 for column, ok in zip(doc_columns, valid[b]) if ok]
        tokens = self.model.preprocess(pairs, prompt=prompt, task=task)
        tokens = {k: v.to(self.model.device) if isinstance(v, torch.Tensor) else v for k, v in tokens.items()}
        logits = self.model(tokens)["scores"].view(-1).float()
        # pairs were built row by row, which is the order masked_scatter fills the valid cells in
        student = torch.zeros(mask.shape, dtype=logits.dtype, device=logits.device).masked_scatter(mask, logits)
        return self.loss(student, teacher, mask, relevance)

    def get_config_dict(self) -> dict[str, Any]:
        return self.loss.get_config_dict()

    @property
    def citation(self) -> str:
        return getattr(self.loss, "citation", "")


class BiEncoderGroupLoss(nn.Module):
    """Loss for ``SentenceTransformerTrainer``: embed the query and its documents, score each
    document by (cosine or dot) similarity times ``scale``, and apply the distillation loss.

    Teacher logits spread over several units while cosines lie in [-1, 1]: the scale (20 by
    default, MultipleNegativesRankingLoss's) lets the student's scores reach the teacher's
    range. With ``learn_scale`` it is a parameter the trainer optimises with the model (the
    trainers add a loss's parameters to the optimizer); ranking does not depend on it.
    """

    def __init__(self, model, loss: nn.Module, similarity: str = "cosine", scale: float = 20.0,
                 learn_scale: bool = False) -> None:
        super().__init__()
        if similarity not in ("cosine", "dot"):
            raise ConfigError(f"similarity must be 'cosine' or 'dot', got {similarity!r}")
        self.model = model
        self.loss = loss
        self.similarity = similarity
        self.scale = nn.Parameter(torch.tensor(float(scale)), requires_grad=learn_scale)

    def forward(self, features: list[dict[str, torch.Tensor]], labels: torch.Tensor) -> torch.Tensor:
        teacher, mask, relevance = _unpack(labels, self.model.device)
        embeddings = [self.model(f)["sentence_embedding"] for f in features]
        query, docs = embeddings[0], torch.stack(embeddings[1:], dim=1)  # [B, H], [B, L, H]
        if self.similarity == "cosine":
            query, docs = nn.functional.normalize(query, dim=-1), nn.functional.normalize(docs, dim=-1)
        if getattr(self.loss, "signature", "group") == "in_batch":
            # every query against every document of the batch, [B, B*L]: column c*L + j is doc j of group c
            student = query.float() @ docs.float().flatten(0, 1).T * self.scale
        else:
            student = torch.einsum("bh,blh->bl", query.float(), docs.float()) * self.scale
        return self.loss(student, teacher, mask, relevance)

    def get_config_dict(self) -> dict[str, Any]:
        return {**self.loss.get_config_dict(), "similarity": self.similarity,
                "scale": float(self.scale.detach()), "learn_scale": self.scale.requires_grad}

    @property
    def citation(self) -> str:
        return getattr(self.loss, "citation", "")


def precision_flags(precision: str) -> dict[str, bool]:
    """The trainers' ``bf16`` / ``fp16`` / ``use_cpu`` flags for a chosen precision (not "auto")."""
    cuda = torch.cuda.is_available()
    if precision == "fp16" and not cuda:
        raise ConfigError("fp16 training needs a CUDA GPU; use --precision fp32 (or auto) on CPU")
    # bf16 on a CPU is autocast there; transformers refuses it unless told the run is on the CPU
    return {"bf16": precision == "bf16", "fp16": precision == "fp16", **({"use_cpu": True} if not cuda else {})}


@dataclass
class Fitted:
    """What :func:`fit` did: the trainer's log history and the precision it trained in."""

    history: list[dict[str, Any]]
    precision: TrainPrecision


def fit(model, loss: nn.Module, train: list[Group], valid: list[Group], config: TrainConfig,
        checkpoints: Path, evaluator=None, patience: int | None = None) -> Fitted:
    """Train ``model`` (a CrossEncoder or a SentenceTransformer) in place; return the log history
    and the precision chosen (:func:`distill.training.precision.choose_train_precision`).

    With ``valid`` groups or an ``evaluator`` (a sentence-transformers evaluator whose
    ``primary_metric`` is to be maximised), the model is evaluated every epoch (or every
    ``eval_steps``) and the best checkpoint is the one left in ``model`` at the end; with
    ``patience``, training stops once that many evaluations in a row did not improve on the
    best (transformers' ``EarlyStoppingCallback``), so ``config.epochs`` is a cap.
    """
    trainer_class, arguments_class = _trainer_classes(model)
    if config.dropout is not None:
        set_dropout(model, config.dropout)
    evaluating = bool(valid) or evaluator is not None
    if config.resume_from_checkpoint is None and any(checkpoints.glob("checkpoint-*")):
        log.warning("%s holds checkpoints of an earlier run; training starts afresh (resume to continue)",
                    checkpoints)
    # measured on rank 0 only and broadcast: ranks that timed apart could choose different precisions
    precision = TrainPrecision(**on_main(
        lambda: choose_train_precision(config.precision, model, train[:SAMPLE_GROUPS]).to_dict()))
    args = arguments_class(**_training_arguments(config, checkpoints, precision.chosen, evaluator, evaluating))
    trainer = trainer_class(
        model=model, args=args, loss=loss,
        train_dataset=groups_to_hf_dataset(train),
        eval_dataset=groups_to_hf_dataset(valid) if valid else None,
        evaluator=evaluator,
        callbacks=_early_stopping(patience) if evaluating else None,
    )
    if args.disable_tqdm:
        # transformers quiet (distill's default: its logger at ERROR) prints every log dict instead of
        # a bar; the losses stay in the log history and distill reports validation in its own words
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    try:
        trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    except ValueError as err:
        if "checkpoint" in str(err).lower():
            raise ConfigError(f"cannot resume: {err}", path=checkpoints) from None
        raise
    return Fitted(trainer.state.log_history, precision)


def set_dropout(model: nn.Module, p: float) -> None:
    """Train ``model`` with dropout probability ``p`` in every ``nn.Dropout`` it holds.

    Set on the modules rather than through the config (``hidden_dropout_prob``, ...), whose names differ
    between architectures: transformers' attention layers read their probability from their own
    ``nn.Dropout`` too (BERT's passes ``self.dropout.p`` to scaled-dot-product attention). The saved
    config keeps the model's own values: the setting is this training's, as the learning rate is.
    """
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p


def _trainer_classes(model) -> tuple[type, type]:
    """The sentence-transformers trainer for ``model`` (a CrossEncoder's or a SentenceTransformer's),
    made to write checkpoints without pickle (:class:`~distill.training.checkpoints.SafeCheckpoints`),
    and its training-arguments class."""
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.cross_encoder import (
        CrossEncoder,
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
    )

    from distill.training.checkpoints import SafeCheckpoints

    cross = isinstance(model, CrossEncoder)
    base = CrossEncoderTrainer if cross else SentenceTransformerTrainer
    arguments_class = CrossEncoderTrainingArguments if cross else SentenceTransformerTrainingArguments
    return type(f"Safe{base.__name__}", (SafeCheckpoints, base), {}), arguments_class


def _training_arguments(config: TrainConfig, checkpoints: Path, precision: str, evaluator,
                        evaluating: bool) -> dict[str, Any]:
    """The trainer's arguments for ``config``: checkpoints (and evaluations, when ``evaluating``) every
    epoch or every ``eval_steps``, the best checkpoint by ``evaluator``'s primary metric (else the
    validation loss) kept at the end, training in ``precision`` (:func:`precision_flags`)."""
    strategy = "steps" if config.eval_steps else "epoch"
    best = {}
    if evaluating:
        best = {"load_best_model_at_end": True, "greater_is_better": evaluator is not None,
                "metric_for_best_model": evaluator.primary_metric if evaluator is not None else "loss"}
    return dict(
        output_dir=str(checkpoints),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        learning_rate=config.lr,
        warmup_steps=config.warmup_ratio,  # transformers >= 5: a value below 1 is a fraction of the steps
        weight_decay=config.weight_decay,
        seed=config.seed,
        data_seed=config.seed,
        eval_strategy=strategy if evaluating else "no",
        save_strategy=strategy,
        **({"eval_steps": config.eval_steps, "save_steps": config.eval_steps} if config.eval_steps else {}),
        save_total_limit=config.save_total_limit,
        logging_steps=config.logging_steps,
        report_to="none",
        dataloader_pin_memory=torch.cuda.is_available(),
        **precision_flags(precision),
        **best,
    )


def _early_stopping(patience: int | None) -> list | None:
    if not patience:
        return None
    from transformers import EarlyStoppingCallback

    return [EarlyStoppingCallback(early_stopping_patience=patience)]


def scores_summary(dataset, scores, train: list[Group], valid: list[Group],
                   folder: Path | None = None) -> dict[str, Any]:
    """What a student was trained on, for its manifest: dataset, split, a hash of the scores, and the dataset's
    path, absolute and relative to the model ``folder`` (:func:`distill.core.recorded_paths.record_path`)."""
    from distill.core.manifest import frame_hash
    from distill.core.recorded_paths import record_path
    from distill.core.schema import DOCID, QID

    where = record_path(dataset.path, folder or ".") if dataset.path else {"path": None}
    return {
        "dataset": dataset.name, "split": dataset.split, **where,
        "scores_hash": frame_hash(scores.sort([QID, DOCID])), "score_rows": scores.height,
        "train_queries": len(train), "valid_queries": len(valid),
        "train_documents": sum(len(g) for g in train),
    }

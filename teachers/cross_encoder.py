"""Cross-encoder teachers: any sentence-transformers CrossEncoder or HF sequence-classification model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from distill.core.errors import ConfigError
from distill.core.io import read_json
from distill.inference.passages import PassageConfig, score_passages
from teachers.base import Teacher, local_model_folder

if TYPE_CHECKING:
    import torch


def checkpoint_keys(folder: str | Path) -> set[str]:
    """Names of the tensors stored in a model folder's weight files (read from headers, not tensors)."""
    from safetensors import safe_open

    root = Path(folder)
    keys: set[str] = set()
    for index in root.glob("*.index.json"):
        keys |= set(read_json(index)["weight_map"])
    for path in root.glob("*.safetensors"):
        with safe_open(path, framework="numpy") as handle:
            keys |= set(handle.keys())
    if not keys:
        import torch

        # Legacy checkpoints: the same restricted (weights-only) loader transformers uses on
        # them; mmap leaves the tensors on disk.
        for path in root.glob("*.bin"):
            keys |= set(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
    return keys


def seed_parameters(model: Any, names: list[str], seed: int) -> None:
    """Initialise the parameters ``names`` from ``seed`` alone, the same in every process.

    transformers draws freshly initialised parameters from the global RNG, so each process
    would get another head. Matrices are drawn as the model's own init does (normal, std
    ``initializer_range``), biases are zero and norm scales one.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    std = getattr(model.config, "initializer_range", 0.02)
    with torch.no_grad():
        for name in sorted(names):
            param = model.get_parameter(name)
            if param.dim() >= 2:
                values = torch.empty(param.shape, dtype=torch.float32).normal_(0.0, std, generator=generator)
            else:
                values = torch.zeros(param.shape) if name.endswith("bias") else torch.ones(param.shape)
            param.copy_(values)


def untrained_head(model: Any, folder: str | Path) -> list[str]:
    """Parameters outside the base model (the classification head) that the checkpoint lacks.

    Such parameters were freshly initialised when loading, so the scores would be random.
    """
    prefix = f"{model.base_model_prefix}."
    keys = checkpoint_keys(folder)
    suffixes = {key.split(".", 1)[1] for key in keys if "." in key}  # tolerate a wrapper's prefix
    head = [name for name, _ in model.named_parameters() if not name.startswith(prefix)]
    return [name for name in head if name not in keys and name not in suffixes]


class CrossEncoderTeacher(Teacher):
    """Raw logits of a cross-encoder: the single logit, or logit(1) - logit(0) for 2-label models.

    Loads through :class:`sentence_transformers.CrossEncoder` (hub id or local folder) and
    scores with the underlying transformers model and tokenizer, batched by token budget.
    On a CPU it may also score through ONNX Runtime or OpenVINO (``backend``, see
    :mod:`teachers.precision`). A model whose classification head is not in its checkpoint is refused unless
    ``allow_untrained_head``; then the head is drawn from ``head_seed``, so every process
    scores alike, and the fingerprint records it. ``passages`` scores a long document by its
    passages (FirstP, MaxP, SumP: :mod:`distill.inference.passages`) instead of its first ``max_length``
    tokens; the fingerprint records that too.
    """

    kind = "cross-encoder"
    quantizable = True

    def __init__(
        self,
        model_name_or_path: str | Path,
        max_length: int | None = None,
        dtype: str = "auto",
        device: str | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        allow_untrained_head: bool = False,
        max_tokens_per_batch: int | None = None,
        head_seed: int = 0,
        backend: str = "auto",
        passages: PassageConfig | dict[str, Any] | None = None,
    ) -> None:
        self.allow_untrained_head = allow_untrained_head
        # resolved for max_length once the model is loaded; a dict as a fingerprint records it
        self.passages = PassageConfig(**passages) if isinstance(passages, dict) else passages
        self.head_seed = head_seed
        self.untrained: list[str] = []
        super().__init__(model_name_or_path, max_length=max_length, dtype=dtype, device=device, revision=revision,
                         trust_remote_code=trust_remote_code, max_tokens_per_batch=max_tokens_per_batch,
                         backend=backend)

    def _load(self) -> None:
        import torch
        from sentence_transformers import CrossEncoder

        cross_encoder = CrossEncoder(
            self.model_name_or_path, device=str(self.device), revision=self.revision,
            trust_remote_code=self.trust_remote_code, max_length=self.max_length,
            model_kwargs={"dtype": torch.float32},
        )
        modules = list(cross_encoder)
        task = getattr(modules[0], "transformer_task", None)
        if task == "text-generation":
            raise ConfigError("a causal language model; load it as a generative teacher (kind 'generative')",
                              path=self.model_name_or_path)
        if len(modules) != 1 or task != "sequence-classification":
            raise ConfigError("expected a transformer with a classification head, got the modules "
                              f"{[type(m).__name__ for m in modules]}", path=self.model_name_or_path)
        model = cross_encoder.model
        positions = getattr(model.config, "max_position_embeddings", None)
        if self.max_length is None:  # the model's own setting (saved by sentence-transformers), at most 512
            self.max_length = min(n for n in (cross_encoder.max_seq_length, positions, 512) if n)
        if positions is not None and self.max_length > positions:
            raise ConfigError(f"max_length {self.max_length} exceeds the model's {positions} positions",
                              path=self.model_name_or_path, field="max_length")
        self.passages = None if self.passages is None else self.passages.resolve(self.max_length)
        self.num_labels = model.config.num_labels
        if self.num_labels not in (1, 2):
            raise ConfigError(f"the model has {self.num_labels} labels; a reranker has 1 (a score) or 2 "
                              "(not relevant, relevant)", path=self.model_name_or_path)
        self.model = model.eval()
        missing = untrained_head(model, local_model_folder(self.model_name_or_path, self.resolved_revision()))
        if missing and not self.allow_untrained_head:
            raise ConfigError(
                f"the model has no trained classification head (its checkpoint lacks {', '.join(missing)}), "
                "so its scores would be random; pass --allow-untrained-head (allow_untrained_head=True) "
                "to use it anyway", path=self.model_name_or_path,
            )
        seed_parameters(model, missing, self.head_seed)
        self.untrained = missing
        self.tokenizer = cross_encoder.tokenizer
        self.lowercase = bool(getattr(modules[0], "do_lower_case", False))
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.features = [n for n in self.tokenizer.model_input_names if n != "attention_mask"]

    def _score(self, queries: Sequence[str], docs: Sequence[str],
               progress: Callable[[int], None] | None = None) -> np.ndarray:
        if self.passages is None:
            return super()._score(queries, docs, progress)
        docs = [d.lower() for d in docs] if self.lowercase else docs  # split the text _encode tokenizes
        return score_passages(super()._score, self.tokenizer, queries, docs, self.passages, progress=progress,
                              lock=self._encode_lock)

    def _encode(self, queries: Sequence[str], docs: Sequence[str]) -> dict[str, list[list[int]]]:
        if self.lowercase:
            queries, docs = [q.lower() for q in queries], [d.lower() for d in docs]
        encoded = self.tokenizer(list(queries), list(docs), truncation="longest_first", max_length=self.max_length,
                                 return_attention_mask=False)
        return {name: encoded[name] for name in self.features if name in encoded}

    def _forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self.model(**batch).logits.float()
        return logits[:, 0] if self.num_labels == 1 else logits[:, 1] - logits[:, 0]

    def _graph_backends(self) -> tuple[str, ...]:
        from distill.inference.graph import available_backends

        return available_backends() if self.device.type == "cpu" else ()

    def _export_graph(self, folder: Path, backend: str) -> None:
        from distill.inference.graph_export import export_pair_scorer

        export_pair_scorer(self.model, self.num_labels, self.tokenizer, folder, backend)

    def _scoring_options(self) -> dict[str, Any]:
        # only an untrained head changes the scores: a trained one ignores both options; no passages: as before
        head = {"allow_untrained_head": True, "head_seed": self.head_seed} if self.untrained else {}
        return head | ({} if self.passages is None else {"passages": self.passages.to_dict()})

    def _config_extra(self) -> dict[str, Any]:
        return {"allow_untrained_head": self.allow_untrained_head, "head_seed": self.head_seed}

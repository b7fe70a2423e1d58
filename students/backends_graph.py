"""The torch side of ``distill export``: a student as one ONNX graph (see :mod:`students.export`).

The graph computes what distill's torch rankers compute, so its output is used as is: a
cross-encoder's score per pair (the logit, or ``logit(1) - logit(0)``), a bi-encoder's
sentence embedding per text (every SentenceTransformer module: transformer, pooling,
normalization).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from distill.errors import ConfigError


def load_torch(model: Path, role: str) -> tuple[Any, Any, dict[str, Any]]:
    """The fp32 torch module whose output the graph computes (one score per pair, or one
    sentence embedding per text), its tokenizer and the tokenization settings."""
    if role == "cross-encoder":
        from sentence_transformers import CrossEncoder

        ce = CrossEncoder(str(model), device="cpu", model_kwargs={"dtype": torch.float32})
        hf = ce.model.eval()
        labels = hf.config.num_labels
        if labels not in (1, 2):
            raise ConfigError(f"a reranker has 1 or 2 labels, this model {labels}", path=model)
        positions = getattr(hf.config, "max_position_embeddings", None)
        max_length = min(n for n in (ce.max_seq_length, positions, 512) if n)
        spec = {"role": role, "max_length": max_length, "num_labels": labels,
                "lowercase": bool(getattr(list(ce)[0], "do_lower_case", False))}
        return _Score(hf, labels).eval(), ce.tokenizer, spec
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model), device="cpu").eval()
    spec = {"role": role, "max_length": st.max_seq_length, "similarity": st.similarity_fn_name or "cosine",
            "dimension": st.get_embedding_dimension(),
            "lowercase": bool(getattr(st[0], "do_lower_case", False))}
    return _Embed(st).eval(), st.tokenizer, spec


class _Score(torch.nn.Module):
    """A sequence classifier's score per row, as :class:`teachers.CrossEncoderTeacher` computes it."""

    def __init__(self, model: Any, labels: int) -> None:
        super().__init__()
        self.model, self.labels = model, labels
        self.names: tuple[str, ...] = ()

    def forward(self, *tensors):
        logits = self.model(**dict(zip(self.names, tensors))).logits.float()
        return logits[:, :1] if self.labels == 1 else logits[:, 1:2] - logits[:, :1]


class _Embed(torch.nn.Module):
    """A SentenceTransformer's sentence embedding (every module: transformer, pooling, normalize)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self.names: tuple[str, ...] = ()

    def forward(self, *tensors):
        return self.model(dict(zip(self.names, tensors)))["sentence_embedding"]


def export_onnx(module: Any, tokenizer: Any, role: str, path: Path) -> tuple[str, ...]:
    """Export ``module`` to ``path`` with dynamic batch and sequence axes; return its input names."""
    texts = ["what is the query", "a longer document about the query and more"]
    example = tokenizer(*([texts, texts[::-1]] if role == "cross-encoder" else [texts]), padding=True,
                        return_tensors="pt")
    names = tuple(n for n in ("input_ids", "attention_mask", "token_type_ids") if n in example)
    module.names = names
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(module, tuple(example[n] for n in names), str(path), input_names=list(names),
                          output_names=["score" if role == "cross-encoder" else "sentence_embedding"],
                          dynamic_shapes=(tuple({0: batch, 1: sequence} for _ in names),), dynamo=True,
                          external_data=False, verbose=False)
    return names

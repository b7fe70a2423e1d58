"""The torch side of ``distill export``: the module a student's graph computes (see :mod:`students.export`).

A cross-encoder's score per pair (the logit, or ``logit(1) - logit(0)``), a bi-encoder's
sentence embedding per text (every SentenceTransformer module: transformer, pooling,
normalization). :func:`distill.inference.graph_export.export_onnx` turns it into the graph.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from distill.core.errors import ConfigError
from distill.inference.graph_export import PairScore


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
        return PairScore(hf, labels).eval(), ce.tokenizer, spec
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model), device="cpu").eval()
    spec = {"role": role, "max_length": st.max_seq_length, "similarity": st.similarity_fn_name or "cosine",
            "dimension": st.get_embedding_dimension(),
            "lowercase": bool(getattr(st[0], "do_lower_case", False))}
    return _Embed(st).eval(), st.tokenizer, spec


class _Embed(torch.nn.Module):
    """A SentenceTransformer's sentence embedding (every module: transformer, pooling, normalize)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self.names: tuple[str, ...] = ()

    def forward(self, *tensors):
        return self.model(dict(zip(self.names, tensors)))["sentence_embedding"]

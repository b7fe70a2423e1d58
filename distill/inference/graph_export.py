"""A torch model as one ONNX graph (and from it an OpenVINO one), for :mod:`distill.inference.graph`.

The graph computes what distill's torch rankers compute, so its output is used as is: a
cross-encoder's score per pair (the logit, or ``logit(1) - logit(0)``), or, for the
bi-encoder students of ``distill export``, any module given (:mod:`students.backends_graph`).
``torch.onnx.export`` with the dynamo exporter needs onnxscript (the ``onnx`` extra).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from distill.core.io import atomic_path, fsync_path
from distill.inference.graph import GRAPH_FILES


class PairScore(torch.nn.Module):
    """A sequence classifier's score per row, as :class:`teachers.CrossEncoderTeacher` computes it."""

    def __init__(self, model: Any, labels: int) -> None:
        super().__init__()
        self.model, self.labels = model, labels
        self.names: tuple[str, ...] = ()

    def forward(self, *tensors):
        logits = self.model(**dict(zip(self.names, tensors))).logits.float()
        return logits[:, :1] if self.labels == 1 else logits[:, 1:2] - logits[:, :1]


def export_onnx(module: Any, tokenizer: Any, role: str, path: Path) -> tuple[str, ...]:
    """Export ``module`` to ``path`` with dynamic batch and sequence axes; return its input names.

    ``module`` takes the tokenizer's features (``input_ids``, ``attention_mask``,
    ``token_type_ids`` where it makes them) positionally, in that order: its ``names`` are set.
    """
    texts = ["what is the query", "a longer document about the query and more"]
    example = tokenizer(*([texts, texts[::-1]] if role == "cross-encoder" else [texts]), padding=True,
                        return_tensors="pt")
    names = tuple(n for n in ("input_ids", "attention_mask", "token_type_ids") if n in example)
    module.names = names
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    # the exporter's notices (deprecations inside torch, axis renames) are not the user's to act on
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", (UserWarning, FutureWarning, DeprecationWarning))
        torch.onnx.export(module, tuple(example[n] for n in names), str(path), input_names=list(names),
                          output_names=["score" if role == "cross-encoder" else "sentence_embedding"],
                          dynamic_shapes=(tuple({0: batch, 1: sequence} for _ in names),), dynamo=True,
                          external_data=False, verbose=False)
    return names


def export_pair_scorer(model: Any, labels: int, tokenizer: Any, folder: Path, backend: str) -> None:
    """Write ``model`` (an fp32 sequence classifier) into ``folder`` as ``backend``'s graph file,
    unless there already (:mod:`distill.inference.graph_cache`). Each file appears under its
    name only once whole, so a graph found there is complete."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / GRAPH_FILES["onnx"]
    if not onnx_path.is_file():
        with atomic_path(onnx_path) as tmp:
            export_onnx(PairScore(model, labels).eval(), tokenizer, "cross-encoder", tmp)
    xml = folder / GRAPH_FILES["openvino"]
    if backend == "openvino" and not xml.is_file():
        import openvino as ov

        # OpenVINO writes NAME.xml and its weights NAME.bin: both are written aside and flushed to disk, the
        # weights renamed first, so an .xml found (even after a power loss) has its whole .bin
        with tempfile.TemporaryDirectory(prefix=".openvino.", suffix=".tmp", dir=folder) as tmp:
            ov.save_model(ov.convert_model(str(onnx_path)), str(Path(tmp) / xml.name), compress_to_fp16=False)
            for name in (xml.with_suffix(".bin").name, xml.name):
                fsync_path(Path(tmp) / name)
                os.replace(Path(tmp) / name, folder / name)
                fsync_path(folder)

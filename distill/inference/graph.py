"""Model graphs outside torch: ONNX Runtime and OpenVINO sessions over padded token batches.

A teacher on a CPU may score through one of these runtimes instead of torch when that
measures faster (:mod:`teachers.precision`), and ``distill export`` writes students as such
graphs (:mod:`students.backends`). The graph itself comes from :mod:`distill.inference.graph_export`.
Both runtimes are optional (``pip install "distill[onnx]"``) and imported where used.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from distill.core.errors import InputError
from distill.inference.batching import pad_batch, token_batches

BACKENDS = ("onnx", "openvino")  # besides torch
GRAPH_FILES = {"onnx": "model.onnx", "openvino": "openvino_model.xml"}
_MODULES = {"onnx": "onnxruntime", "openvino": "openvino"}
# Padded tokens per batch for the graph runtimes on a CPU: smaller batches than torch's run faster
# there (MiniLM-L6 at max_length 512, 2 cores: ONNX Runtime 8.0 s per 100 pairs at 2048 tokens
# against 9.8 s at 16384; OpenVINO int8 of a 2-layer student, 141 against 156 ms;
# docs/results/batch_tokens.md).
GRAPH_MAX_TOKENS = 2048
# OpenVINO's name for each precision it can compute in (INFERENCE_PRECISION_HINT)
OPENVINO_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}

Session = Callable[[dict[str, np.ndarray]], np.ndarray]


def available_backends() -> tuple[str, ...]:
    """The graph runtimes installed here (the ``onnx`` extra installs both)."""
    return tuple(b for b in BACKENDS if importlib.util.find_spec(_MODULES[b]) is not None)


def open_session(folder: str | Path, fmt: str, *, threads: int | None = None,
                 openvino_precision: str = "f32") -> tuple[Session, list[str]]:
    """A function running the graph in ``folder`` (feeds by input name -> first output) and
    the graph's input names. ``threads`` caps the intra-op threads (default: the runtime's)."""
    path = Path(folder) / GRAPH_FILES[fmt]
    if not path.is_file():
        raise InputError(f"no {GRAPH_FILES[fmt]} in the model graph folder", path=folder)
    if fmt == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return (lambda feeds: session.run(None, {n: feeds[n] for n in names})[0]), names
    import openvino as ov

    # LATENCY: one request uses every core on one batch (the THROUGHPUT hint splits them)
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": openvino_precision}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    output = compiled.output(0)
    names = [i.get_any_name() for i in compiled.inputs]
    return (lambda feeds: request.infer({n: feeds[n] for n in names})[output]), names


def run_graph(session: Session, inputs: list[str], encoded: dict[str, list[list[int]]], width: int,
              max_tokens: int, pad_id: int, padding_side: str = "right",
              progress: Callable[[int], None] | None = None) -> np.ndarray:
    """The graph's output rows (``width`` floats each) for unpadded token features, in input
    order, batched by padded tokens as torch teachers are (:mod:`distill.inference.batching`)."""
    features = {n: encoded[n] for n in inputs if n != "attention_mask"}
    lengths = np.fromiter((len(row) for row in features["input_ids"]), dtype=np.int64)
    out = np.empty((len(lengths), width), dtype=np.float32)
    for index in token_batches(lengths, max_tokens):
        out[index] = session(pad_batch(features, index, pad_id, padding_side)).reshape(len(index), width)
        if progress is not None:
            progress(len(index))
    return out

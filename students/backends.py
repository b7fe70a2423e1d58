"""Exported students as rankers: ONNX Runtime and OpenVINO sessions behind the usual interfaces.

``distill export`` (:mod:`students.export`) writes a folder with the model graph
(``model.onnx``, or ``openvino_model.xml`` + ``.bin``), the tokenizer and a ``distill.json``
of kind ``exported-student`` that says how to tokenize and score. :func:`load_exported` turns
such a folder into a ranker: an :class:`ExportedCrossEncoder`, or for a bi-encoder a
:class:`~students.bi_encoder.BiEncoderRanker` whose model is an :class:`ExportedSentenceEncoder`
(so corpus embeddings, cascades and serving work as for the torch model).

sentence-transformers' own ``backend="onnx"|"openvino"`` loading goes through Hugging Face
Optimum, whose ``optimum-onnx`` and ``optimum-intel`` releases pin transformers below the 5.x
this project uses (and pull a CUDA torch with torchvision); these classes run the sessions
directly instead.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from distill.core.errors import InputError
from distill.core.io import read_json
from distill.core.schema import DOCID, QID, SCORE, require_columns
from distill.data.beir import Dataset
from distill.inference.graph import BACKENDS, GRAPH_MAX_TOKENS, open_session, run_graph
from distill.rankers.base import BaseRanker
from students.bi_encoder import BiEncoderRanker

KIND = "exported-student"
FORMATS = BACKENDS

def _torch_threads() -> int | None:
    """torch's intra-op threads where torch is loaded (None: the runtime's own default)."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def read_export_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / "distill.json"
    try:
        body = read_json(path)  # unreadable JSON: an InputError at its line
    except OSError as err:
        raise InputError(f"unreadable export manifest ({err})", path=path) from None
    if body.get("kind") != KIND or body.get("format") not in FORMATS:
        raise InputError(f"not an exported student (kind {KIND!r}, format one of {FORMATS})", path=path)
    return body


class _Exported:
    """Tokenizer and session of an exported folder, tokenizing as the torch model did.

    Thread-safe: a Hugging Face fast tokenizer refuses concurrent calls ("Already borrowed"),
    so tokenizing (and reopening the session) takes a lock; the session itself runs concurrently.
    """

    def __init__(self, folder: str | Path, threads: int | None = None) -> None:
        from transformers import AutoTokenizer

        self.path = Path(folder)
        self.manifest = read_export_manifest(self.path)
        spec = self.manifest["model"]
        self.format = self.manifest["format"]
        self.max_length = int(spec["max_length"])
        self.lowercase = bool(spec.get("lowercase", False))
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.threads = threads
        self._session_threads: int | None = None
        self._lock = threading.Lock()
        self._open()

    def _open(self) -> None:
        """(Re)open the session on ``threads``, or else on as many threads as torch uses:
        distill's latency measurement sets torch's (``--threads``), and an exported model must
        be timed on the same number as the torch model it is compared with."""
        self._session_threads = self.threads or _torch_threads()
        self.session, self.inputs = open_session(
            self.path, self.format, threads=self._session_threads,
            openvino_precision=self.manifest.get("openvino_precision", "f32"))

    def _run(self, encoded: dict[str, list[list[int]]], width: int) -> np.ndarray:
        """The graph's output rows for unpadded token features, in input order, batched by tokens."""
        with self._lock:
            if (self.threads or _torch_threads()) != self._session_threads:
                self._open()
        return run_graph(self.session, self.inputs, encoded, width, GRAPH_MAX_TOKENS, self.pad_id)

    def _lower(self, texts: Sequence[str]) -> list[str]:
        return [t.lower() for t in texts] if self.lowercase else list(texts)

    def _tokenize(self, *texts: Sequence[str], **options: Any) -> Any:
        """The tokenizer's features of ``texts`` (lower-cased where the model was), one call at a time."""
        lowered = [self._lower(t) for t in texts]
        with self._lock:
            return self.tokenizer(*lowered, return_attention_mask=False, max_length=self.max_length, **options)


class ExportedCrossEncoder(_Exported, BaseRanker):
    """An exported cross-encoder: one score per (query, document) pair, the raw logit the
    torch model gives (``logit(1) - logit(0)`` for 2-label models, computed in the graph)."""

    def __init__(self, folder: str | Path, threads: int | None = None) -> None:
        super().__init__(folder, threads)
        self.name = f"{self.format}:{self.path.name}"

    def score(self, queries: Sequence[str], docs: Sequence[str]) -> np.ndarray:
        """float32 scores of the pairs ``zip(queries, docs)``, in input order."""
        if len(queries) != len(docs):
            raise ValueError(f"{len(queries)} queries but {len(docs)} documents")
        if not len(queries):
            return np.empty(0, dtype=np.float32)
        encoded = self._tokenize(queries, docs, truncation="longest_first")
        return self._run(encoded, 1)[:, 0]

    def rerank(self, dataset: Dataset, run: pl.DataFrame) -> pl.DataFrame:
        require_columns(run, [QID, DOCID], "run")
        queries, docs = dataset.query_texts(run[QID]), dataset.doc_texts(run[DOCID])
        if any(t is None for t in queries) or any(t is None for t in docs):
            raise InputError("the run names queries or documents that the dataset lacks")
        return run.select(QID, DOCID).with_columns(pl.Series(SCORE, self.score(queries, docs), dtype=pl.Float64))

    def score_documents(self, query: str, docs: Any) -> np.ndarray:
        """Scores of one query's documents (:class:`distill.rankers.documents.Documents`, for serving)."""
        return self.score([query] * len(docs.texts), docs.texts)

    def get_config_dict(self) -> dict[str, Any]:
        return {"kind": KIND, "path": str(self.path), "format": self.format,
                "quantize": self.manifest.get("quantize"), "source": self.manifest.get("source", {}).get("kind")}


class ExportedSentenceEncoder(_Exported):
    """An exported bi-encoder with the part of ``SentenceTransformer``'s interface that
    :class:`~students.bi_encoder.BiEncoderRanker` uses (``encode``, ``similarity_pairwise``)."""

    def __init__(self, folder: str | Path, threads: int | None = None) -> None:
        super().__init__(folder, threads)
        from sentence_transformers import SimilarityFunction

        self.similarity_fn_name = self.manifest["model"]["similarity"]
        self.dimension = int(self.manifest["model"]["dimension"])
        self._pairwise = SimilarityFunction.to_similarity_pairwise_fn(self.similarity_fn_name)
        self.device = "cpu"

    def encode(self, texts: Sequence[str], batch_size: int = 64, convert_to_tensor: bool = True,
               show_progress_bar: bool = False, **_: Any):
        """Sentence embeddings of ``texts`` (batched by tokens; ``batch_size`` is ignored)."""
        import torch

        encoded = self._tokenize(texts, truncation=True)
        embeddings = self._run(encoded, self.dimension) if len(texts) else np.empty((0, self.dimension), np.float32)
        return torch.from_numpy(embeddings) if convert_to_tensor else embeddings

    def similarity_pairwise(self, a, b):
        return self._pairwise(a, b)


class ExportedBiEncoderRanker(BiEncoderRanker):
    """A :class:`~students.bi_encoder.BiEncoderRanker` over an :class:`ExportedSentenceEncoder`:
    corpus embeddings, cascades and serving work as for the torch model."""

    def __init__(self, path: str | Path, precompute: bool = True, threads: int | None = None) -> None:
        # BiEncoderRanker.__init__ would load a SentenceTransformer: set the same state here
        self.path = Path(path)
        self.precompute = precompute
        self.batch_size = 64
        self.threads = threads
        self.model = ExportedSentenceEncoder(path, threads)
        self.name = f"{self.model.format}:{self.path.name}"
        self._corpus = None
        self._index = {}
        self._doc_embeddings = None
        self._stored = None
        self._encode_lock = threading.Lock()

    def _model_key(self) -> str:
        stamps = sorted(f"{p.name}:{p.stat().st_mtime_ns}" for p in self.path.iterdir() if p.is_file())
        return f"{self.path.resolve()}|{'|'.join(stamps)}"

    def without_precomputation(self) -> ExportedBiEncoderRanker | None:
        return ExportedBiEncoderRanker(self.path, precompute=False, threads=self.threads) if self.precompute else None

    def get_config_dict(self) -> dict[str, Any]:
        return {**super().get_config_dict(), "kind": KIND, "format": self.model.format,
                "quantize": self.model.manifest.get("quantize")}


def load_exported(folder: str | Path, threads: int | None = None, **kwargs: Any) -> BaseRanker:
    """The ranker of an exported folder (the ``exported-student`` loader of :data:`distill.core.registry.RANKERS`).

    ``kwargs`` are the usual ranker-loading options; those that only torch models take
    (device, dtype, ...) do not apply and are ignored.
    """
    folder = Path(folder)
    body = read_export_manifest(folder)
    role = body["model"].get("role")
    if role == "cross-encoder":
        return ExportedCrossEncoder(folder, threads)
    if role == "bi-encoder":
        return ExportedBiEncoderRanker(folder, kwargs.get("precompute", True), threads)
    raise InputError(f"unknown exported model role {role!r} (expected cross-encoder or bi-encoder)",
                     path=folder / "distill.json", field="model.role")


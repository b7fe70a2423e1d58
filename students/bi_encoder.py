"""Bi-encoder students: query and document embedded apart, scored by similarity.

A bi-encoder is much cheaper than a cross-encoder at query time once the corpus is
embedded (:meth:`BiEncoderRanker.prepare`), which is what makes it a first- or
second-stage candidate in a latency-bound cascade. Training fits ``scale * similarity``
to the teacher's scores through a distillation loss (see :mod:`distill.training.trainer`):
:class:`BiEncoderStudent` is the kind ``bi-encoder`` of :mod:`students.student`, trained as every
neural student is (:mod:`students.neural`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import polars as pl

from distill.core.errors import ConfigError, InputError
from distill.core.schema import DOCID, QID, SCORE
from distill.data.beir import Dataset
from distill.rankers.base import BaseRanker
from distill.training.groups import GroupConfig
from students.neural import NeuralStudent, named_loss

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torch import nn

    from distill.cascade.runtime import Documents
    from distill.training.config import TrainConfig
    from distill.training.losses import DistillLoss

log = logging.getLogger(__name__)

KIND = "bi-encoder-student"
SIMILARITIES = ("cosine", "dot")


@dataclass
class BiEncoderConfig:
    """A bi-encoder student's own options: how query and document embeddings are compared.

    A field's metadata holds its ``distill train-student`` help (:mod:`distill.app.options`).
    """

    similarity: Literal["cosine", "dot"] = field(default="cosine", metadata={"help": "Bi-encoder: cosine | dot."})
    scale: float = field(default=20.0, metadata={"help": "Bi-encoder: similarity scale before the loss (> 0)."})
    learn_scale: bool = field(default=False, metadata={"help": "Bi-encoder: learn the scale."})

    def __post_init__(self) -> None:
        if self.similarity not in SIMILARITIES:
            raise ConfigError(f"similarity must be 'cosine' or 'dot', got {self.similarity!r}", field="similarity")


class BiEncoderStudent(NeuralStudent):
    """The bi-encoder student: a SentenceTransformer whose ``scale * similarity`` of query and document
    embeddings learns the teacher's scores."""

    kind = "bi-encoder"
    output_kind = KIND
    config_type = BiEncoderConfig

    def check_start(self, init: str | None, from_teacher: bool) -> None:
        if init is None or from_teacher:
            raise ConfigError("a bi-encoder student needs --init (a SentenceTransformer folder or id, e.g. "
                              "all-MiniLM-L6-v2); --init-from-teacher is for cross-encoders")

    def build_model(self, init: str, trust_remote_code: bool) -> Any:
        """``init`` as a SentenceTransformer (a plain transformer gets mean pooling) whose saved
        ``similarity_fn_name`` is the trained similarity, so ``SentenceTransformer(out).similarity`` scores as in
        training."""
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(init, device=None, trust_remote_code=trust_remote_code)
        model.max_seq_length = self.train_config.max_length
        model.similarity_fn_name = self.config.similarity
        return model

    def group_loss(self, model: Any, loss: DistillLoss) -> nn.Module:
        from distill.training.trainer import BiEncoderGroupLoss

        return BiEncoderGroupLoss(model, loss, similarity=self.config.similarity, scale=self.config.scale,
                                  learn_scale=self.config.learn_scale)


def train_bi_encoder_student(
    dataset: Dataset,
    scores: pl.DataFrame,
    out: str | Path,
    *,
    init: str,
    group_config: GroupConfig,
    train_config: TrainConfig,
    loss_name: str | DistillLoss,
    loss_params: dict[str, Any] | None = None,
    hard_label_weight: float = 0.0,
    hard_label_kind: str = "bce",
    teacher_fingerprint: dict[str, Any] | None = None,
    similarity: str = "cosine",
    scale: float = 20.0,
    learn_scale: bool = False,
    trust_remote_code: bool = False,
    overwrite: bool = False,
) -> Path:
    """Distill the teacher ``scores`` of ``dataset``'s queries into a bi-encoder saved at ``out`` (replacing
    only an earlier such student, unless ``overwrite``).

    ``init`` is a SentenceTransformer folder or id (a plain transformer gets mean pooling).
    ``train_config`` is a :class:`distill.training.config.TrainConfig`. ``loss_name`` is a loss object or a
    registered name built with ``loss_params`` and a hard-label term. See :class:`BiEncoderConfig` for
    ``similarity``, ``scale`` and ``learn_scale``.
    """
    student = BiEncoderStudent(BiEncoderConfig(similarity, scale, learn_scale), group_config=group_config,
                               train_config=train_config)
    return student.fit_and_save(dataset, scores, out, init=init,
                                loss=named_loss(loss_name, loss_params, hard_label_weight, hard_label_kind),
                                teacher_fingerprint=teacher_fingerprint, trust_remote_code=trust_remote_code,
                                overwrite=overwrite)


# (model key, corpus hash) -> (docid -> row, document embeddings): see BiEncoderRanker.prepare
_CORPUS_EMBEDDINGS: dict[tuple[str, str], tuple[dict[str, int], Any]] = {}


class BiEncoderRanker(BaseRanker):
    """A :class:`~distill.rankers.base.BaseRanker` scoring candidates with a bi-encoder.

    With ``precompute`` (default), :meth:`prepare` embeds the whole corpus once, and
    :meth:`rerank` then embeds only the queries. Without it (or before ``prepare``, or for
    another corpus), :meth:`rerank` embeds the queries and their candidate documents on every
    call, which is the latency of a bi-encoder used as a reranker without an index.

    Corpus embeddings are shared by every ranker of the same model folder in a process
    (:data:`_CORPUS_EMBEDDINGS`), so a cascade stage reuses the standalone bi-encoder's instead
    of embedding the corpus again; ``prepare`` then returns at once.
    """

    def __init__(self, path: str | Path, precompute: bool = True, batch_size: int = 64,
                 device: str | None = None) -> None:
        from sentence_transformers import SentenceTransformer

        self.path = Path(path)
        self.precompute = precompute
        self.batch_size = batch_size
        self.model = SentenceTransformer(str(path), device=device)
        self.name = f"bi-encoder:{self.path.name}"
        self._corpus: pl.DataFrame | None = None
        self._index: dict[str, int] = {}
        self._doc_embeddings = None
        self._stored: np.ndarray | None = None  # the runtime's corpus embeddings (prepare_runtime)
        # Hugging Face fast tokenizers refuse concurrent calls ("Already borrowed"): one encode at a time
        self._encode_lock = threading.Lock()

    def prepare(self, dataset: Dataset) -> None:
        """Embed every document of ``dataset``'s corpus (a no-op without ``precompute``)."""
        if not self.precompute:
            return
        from distill.core.manifest import frame_hash

        key = (self._model_key(), frame_hash(dataset.corpus))
        if key not in _CORPUS_EMBEDDINGS:
            docids = dataset.corpus[DOCID].to_list()
            _CORPUS_EMBEDDINGS[key] = ({d: i for i, d in enumerate(docids)},
                                       self._encode(dataset.doc_texts(docids)))
        self._index, self._doc_embeddings = _CORPUS_EMBEDDINGS[key]
        self._corpus = dataset.corpus

    def _model_key(self) -> str:
        """The model's folder and its weights' modification times (a retrained folder is another model)."""
        if not self.path.is_dir():
            return str(self.path)  # a hub id
        stamps = sorted(f"{p.name}:{p.stat().st_mtime_ns}" for p in self.path.rglob("*.safetensors"))
        return f"{self.path.resolve()}|{'|'.join(stamps)}"

    def rerank(self, dataset: Dataset, run: pl.DataFrame) -> pl.DataFrame:
        """``qid, docid, score`` for every row of ``run``: the similarity of query and document."""
        rows = run.select(QID, DOCID)
        if rows.height == 0:
            return rows.with_columns(pl.lit(0.0).alias(SCORE))
        qids = rows[QID].unique(maintain_order=True).to_list()
        query_embeddings = self._encode(dataset.query_texts(qids))
        q_index = {q: i for i, q in enumerate(qids)}
        if self._doc_embeddings is not None and dataset.corpus is self._corpus:
            doc_embeddings, d_index = self._doc_embeddings, self._index
        else:
            docids = rows[DOCID].unique(maintain_order=True).to_list()
            doc_embeddings, d_index = self._encode(dataset.doc_texts(docids)), {d: i for i, d in enumerate(docids)}
        q_rows = np.fromiter((q_index[q] for q in rows[QID]), dtype=np.int64, count=rows.height)
        d_rows = np.fromiter((d_index[d] for d in rows[DOCID]), dtype=np.int64, count=rows.height)
        scores = self.model.similarity_pairwise(query_embeddings[q_rows], doc_embeddings[d_rows])
        return rows.with_columns(pl.Series(SCORE, scores.float().cpu().numpy().astype(np.float64)))

    def _encode(self, texts: list[str]):
        if any(t is None for t in texts):
            raise InputError("the run names queries or documents that the dataset lacks")
        with self._encode_lock:
            return self.model.encode(texts, batch_size=self.batch_size, convert_to_tensor=True,
                                     show_progress_bar=False)

    def prepare_runtime(self, corpus: Dataset | None) -> None:
        """Embeddings of ``corpus``'s documents for :meth:`score_documents`, kept next to the
        model so a restart reads them (:mod:`students.embedding_store`)."""
        from students.embedding_store import corpus_embeddings

        self._stored = None if corpus is None or not self.precompute else corpus_embeddings(self, corpus)

    def score_documents(self, query: str, docs: Documents) -> np.ndarray:
        """Scores of one query's documents (:class:`distill.cascade.runtime.Documents`): stored
        embeddings for corpus documents, the others embedded now."""
        from students.embedding_store import score_documents

        return score_documents(self, self._stored, query, docs)

    def score_requests(self, requests: Sequence[tuple[str, Documents]]) -> list[np.ndarray]:
        """Scores of several queries' documents, their texts embedded together (serving's batches)."""
        from students.embedding_store import score_requests

        return score_requests(self, self._stored, requests)

    def without_precomputation(self) -> BiEncoderRanker | None:
        """The same model embedding each query's documents on the fly (None without ``precompute``)."""
        if not self.precompute:
            return None
        cold = BiEncoderRanker(self.path, precompute=False, batch_size=self.batch_size, device=str(self.model.device))
        cold.name = self.name
        return cold

    def get_config_dict(self) -> dict[str, Any]:
        return {"kind": KIND, "path": str(self.path), "precompute": self.precompute,
                "batch_size": self.batch_size, "similarity": self.model.similarity_fn_name}

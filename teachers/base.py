"""What every teacher is: a model that scores (query, document) pairs with raw logits.

The cache stores those logits next to :meth:`Teacher.fingerprint`, which names everything
that changes them (model and weights, max_length, prompt template, precision in use).
Teachers also follow :class:`distill.ranking.Ranker`, so a teacher, or a cross-encoder
student folder loaded as one, is evaluated and cascaded like any other reranker.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import polars as pl

from distill.errors import ConfigError, InputError
from distill.schema import DOCID, QID, SCORE, require_columns
from teachers.batching import default_max_tokens, score_batches
from teachers.device import resolve_device
from teachers.precision import check_dtype_name, check_precision, target_dtype, torch_dtype

if TYPE_CHECKING:
    import torch

    from distill.data import Dataset

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?")
WEIGHT_PATTERNS = ("*.safetensors", "*.bin")


def is_local(model_name_or_path: str | Path) -> bool:
    return Path(model_name_or_path).expanduser().exists()


def check_model_reference(model_name_or_path: str | Path) -> None:
    """Raise :class:`InputError` for a path that does not exist and cannot be a hub id either."""
    name = str(model_name_or_path)
    if not is_local(name) and not (_HUB_ID.fullmatch(name) and ".." not in name):
        raise InputError("model folder not found (and not a hub id like 'org/name')", path=name)


def weights_sha256(folder: str | Path) -> str:
    """sha256 over the weight files (``*.safetensors``, ``*.bin``) of a model folder, names included."""
    root = Path(folder)
    files = sorted({p for pattern in WEIGHT_PATTERNS for p in root.rglob(pattern) if p.is_file()})
    if not files:
        raise InputError("no *.safetensors or *.bin weight files", path=root)
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def local_model_folder(model_name_or_path: str, revision: str | None) -> Path:
    """The folder holding a model's files: the path itself, or the hub cache's snapshot."""
    if is_local(model_name_or_path):
        return Path(model_name_or_path).expanduser().resolve()
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model_name_or_path, revision=revision, local_files_only=True))


class Teacher(ABC):
    """Scores (query, document) pairs with a model's raw logits, batched by a token budget.

    Subclasses load ``self.model`` (a transformers model, in fp32) and ``self.pad_id`` in
    :meth:`_load`, turn pairs into token ids in :meth:`_encode` and padded batches into one
    score per row in :meth:`_forward`.
    """

    kind: ClassVar[str]
    padding_side: str = "right"

    def __init__(
        self,
        model_name_or_path: str | Path,
        *,
        max_length: int | None,
        dtype: str,
        device: str | None,
        revision: str | None,
        trust_remote_code: bool,
        max_tokens_per_batch: int | None,
    ) -> None:
        check_model_reference(model_name_or_path)
        if max_length is not None and max_length < 1:
            raise ConfigError(f"max_length must be positive, got {max_length}", field="max_length")
        if max_tokens_per_batch is not None and max_tokens_per_batch < 1:
            raise ConfigError(f"max_tokens_per_batch must be positive, got {max_tokens_per_batch}",
                              field="max_tokens_per_batch")
        self.model_name_or_path = str(model_name_or_path)
        self.name = Path(self.model_name_or_path).name if is_local(self.model_name_or_path) else self.model_name_or_path
        self.max_length = max_length
        self.requested_dtype = check_dtype_name(dtype)
        self.device = resolve_device(device)
        self.revision = revision
        self.trust_remote_code = trust_remote_code
        self.max_tokens_per_batch = max_tokens_per_batch or default_max_tokens(self.device)
        self.model: Any = None
        self.pad_id = 0
        self._source: dict[str, str] | None = None
        self.dtype = "fp32"
        target = target_dtype(dtype, self.device)
        # A reduced precision waits for pairs to check it on (see settle_precision).
        self._pending_dtype = None if target == "fp32" else target
        self._load_fp32()

    # -- what subclasses provide -------------------------------------------------------------

    @abstractmethod
    def _load(self) -> None:
        """Load ``self.model`` in fp32 on ``self.device`` (eval mode) and set ``self.pad_id``."""

    @abstractmethod
    def _encode(self, queries: Sequence[str], docs: Sequence[str]) -> dict[str, list[list[int]]]:
        """Token-level features per pair (at least ``input_ids``), each within ``max_length``."""

    @abstractmethod
    def _forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One score per row of a padded batch (``input_ids``, ``attention_mask``, ...)."""

    def _scoring_options(self) -> dict[str, Any]:
        """Options beyond the common ones that change the scores (fingerprint and config)."""
        return {}

    def _config_extra(self) -> dict[str, Any]:
        """Options that do not change the scores (config only)."""
        return {}

    # -- scoring -----------------------------------------------------------------------------

    def score(
        self, queries: Sequence[str], docs: Sequence[str], progress: Callable[[int], None] | None = None
    ) -> np.ndarray:
        """Raw logits (float32) for the pairs ``zip(queries, docs)``, in input order.

        ``progress(n)`` is called after each batch with the number of pairs it held.
        """
        if len(queries) != len(docs):
            raise ValueError(f"{len(queries)} queries but {len(docs)} documents")
        if not len(queries):
            return np.empty(0, dtype=np.float32)
        self.settle_precision(queries, docs)
        return self._score(queries, docs, progress)

    def _score(
        self, queries: Sequence[str], docs: Sequence[str], progress: Callable[[int], None] | None = None
    ) -> np.ndarray:
        return score_batches(self._encode(queries, docs), self._forward, self.device, self.max_tokens_per_batch,
                             self.pad_id, self.padding_side, progress)

    def settle_precision(self, queries: Sequence[str], docs: Sequence[str]) -> str:
        """Check a pending reduced precision on a sample of these pairs; return the dtype in use.

        Runs once (the first :meth:`score` calls it); afterwards the dtype is fixed.
        """
        if self._pending_dtype is not None:
            result = check_precision(self._score, self._cast, self._pending_dtype, queries, docs, self.name)
            self._pending_dtype = None
            if result.passed:
                self.dtype = result.dtype
            else:
                self._load_fp32()  # casting down lost the fp32 weights; load them again
        return self.dtype

    def _cast(self, dtype: str) -> None:
        self.model.to(torch_dtype(dtype))

    def _load_fp32(self) -> None:
        try:
            self._load()
        except (OSError, ValueError) as err:
            raise InputError(f"cannot load model: {err}", path=self.model_name_or_path) from err

    # -- identity ----------------------------------------------------------------------------

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this teacher's scores (JSON-serializable).

        A local model is named by its resolved path and the sha256 of its weight files, a hub
        model by its id and revision. Requires the precision to be settled: call
        :meth:`settle_precision` (or :meth:`score`) first when a reduced dtype was asked for.
        """
        if self._pending_dtype is not None:
            raise RuntimeError(f"{self.name}: {self._pending_dtype} is not checked yet; call settle_precision "
                               "(queries, docs) or score() before fingerprint()")
        if self._source is None:
            if is_local(self.model_name_or_path):
                folder = Path(self.model_name_or_path).expanduser().resolve()
                self._source = {"model": str(folder), "weights_sha256": weights_sha256(folder)}
            else:
                self._source = {"model": self.model_name_or_path, "revision": self.resolved_revision() or "main"}
        return {"kind": self.kind, **self._source, "max_length": self.max_length, "dtype": self.dtype,
                **self._scoring_options()}

    def resolved_revision(self) -> str | None:
        """The hub commit the loaded model came from (else the revision asked for; None locally)."""
        return getattr(self.model.config, "_commit_hash", None) or self.revision

    def get_config_dict(self) -> dict[str, Any]:
        """The options this teacher was built with (for manifests)."""
        return {
            "kind": self.kind, "model_name_or_path": self.model_name_or_path, "max_length": self.max_length,
            "dtype": self.requested_dtype, "device": str(self.device), "revision": self.revision,
            "trust_remote_code": self.trust_remote_code, "max_tokens_per_batch": self.max_tokens_per_batch,
            **self._scoring_options(), **self._config_extra(),
        }

    # -- Ranker ------------------------------------------------------------------------------

    def rerank(
        self, dataset: Dataset, run: pl.DataFrame, progress: Callable[[int], None] | None = None
    ) -> pl.DataFrame:
        """Score every (qid, docid) row of ``run`` with the dataset's texts: ``qid, docid, score``."""
        require_columns(run, [QID, DOCID], "run")
        queries = dataset.query_texts(run[QID])
        docs = dataset.doc_texts(run[DOCID])
        for column, texts, what in ((QID, queries, "queries"), (DOCID, docs, "corpus")):
            missing = [id_ for id_, text in zip(run[column].to_list(), texts) if text is None]
            if missing:
                raise InputError(f"run has {column} {missing[0]!r} that the {what} lack "
                                 f"({len(set(missing))} id(s) missing)")
        scores = self.score(queries, docs, progress)
        return run.select(QID, DOCID).with_columns(pl.Series(SCORE, scores, dtype=pl.Float64))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_name_or_path!r}, max_length={self.max_length}, dtype={self.dtype})"

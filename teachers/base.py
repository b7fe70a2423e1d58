"""What every teacher is: a model that scores (query, document) pairs with raw logits.

The cache stores those logits next to :meth:`Teacher.fingerprint`, which names everything
that changes them (model and weights, max_length, prompt template, precision and runtime in
use). The compute (precision, and torch or a graph runtime) is settled once, by measurement
(:mod:`teachers.precision`), on the first pairs a teacher sees, or taken over from a cache
that recorded it (:meth:`Teacher.resume_precision`).
Teachers also follow :class:`distill.rankers.base.Ranker`, so a teacher, or a cross-encoder
student folder loaded as one, is evaluated and cascaded like any other reranker.
"""

from __future__ import annotations

import hashlib
import re
import threading
from abc import abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import polars as pl

from distill.core.errors import ConfigError, InputError
from distill.core.schema import DOCID, QID, SCORE, require_columns
from distill.inference.batching import default_max_tokens, score_batches
from distill.inference.device import resolve_device
from distill.inference.graph import GRAPH_MAX_TOKENS, OPENVINO_PRECISIONS, open_session, run_graph
from distill.rankers.base import BaseRanker
from teachers.precision import (
    PrecisionChoice,
    candidate_computes,
    check_backend_name,
    check_dtype_name,
    choose_precision,
    compute_name,
    device_timer,
    int8_available,
    parse_compute,
    torch_dtype,
)

if TYPE_CHECKING:
    import torch

    from distill.data.beir import Dataset

DTYPES_IN_USE = ("fp32", "bf16", "fp16", "int8")
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


class Teacher(BaseRanker):
    """Scores (query, document) pairs with a model's raw logits, batched by a token budget.

    Subclasses load ``self.model`` (a transformers model, in fp32) and ``self.pad_id`` in
    :meth:`_load`, turn pairs into token ids in :meth:`_encode` and padded batches into one
    score per row in :meth:`_forward`. Those that can run as an ONNX graph name the graph
    runtimes they take in :meth:`_graph_backends` and write the graph in :meth:`_export_graph`.
    Thread-safe: :meth:`_encode` runs one call at a time (a Hugging Face fast tokenizer refuses
    concurrent calls, "Already borrowed") and the precision is settled once, under a lock.
    """

    kind: ClassVar[str]
    padding_side: str = "right"
    quantizable: ClassVar[bool] = False  # may compute in dynamic int8 on a CPU (teachers.precision)

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
        backend: str = "auto",
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
        self.requested_backend = check_backend_name(backend)
        self.device = resolve_device(device)
        self.revision = revision
        self.trust_remote_code = trust_remote_code
        self.max_tokens_per_batch = max_tokens_per_batch or default_max_tokens(self.device)
        self.graph_max_tokens_per_batch = max_tokens_per_batch or GRAPH_MAX_TOKENS  # graph runtimes batch smaller
        self.model: Any = None
        self.pad_id = 0
        self._source: dict[str, str] | None = None
        self.dtype = "fp32"
        self.backend = "torch"
        self._graph: tuple[Any, list[str]] | None = None  # (session, input names) when not torch
        self._graph_dir: Path | None = None
        # The computes (precision and runtime) this teacher may end up in; with more than one,
        # the choice waits for pairs to measure them on (see settle_precision).
        self.dtype_candidates = candidate_computes(dtype, self.device, backend, self._graph_backends(),
                                                   self.quantizable)
        self.precision: dict[str, Any] | None = None  # what settle_precision measured
        self._pending = len(self.dtype_candidates) > 1
        self._encode_lock, self._settle_lock = threading.Lock(), threading.Lock()
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

    def _graph_backends(self) -> tuple[str, ...]:
        """The graph runtimes (:mod:`distill.inference.graph`) this teacher can score through here."""
        return ()

    def _export_graph(self, folder: Path, backend: str) -> None:
        """Write the fp32 model into ``folder`` as ``backend``'s graph (see :meth:`_graph_backends`)."""
        raise NotImplementedError(f"{type(self).__name__} has no graph export")

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
        choice = self.settle_precision(queries, docs)
        if choice is None:
            return self._score(queries, docs, progress)
        scores = np.empty(len(queries), dtype=np.float32)  # the measured sample's scores are kept
        scores[choice.index] = choice.scores
        if progress is not None:
            progress(len(choice.index))
        rest = np.setdiff1d(np.arange(len(queries)), choice.index)
        if len(rest):
            scores[rest] = self._score([queries[i] for i in rest], [docs[i] for i in rest], progress)
        return scores

    def _score(
        self, queries: Sequence[str], docs: Sequence[str], progress: Callable[[int], None] | None = None
    ) -> np.ndarray:
        with self._encode_lock:
            encoded = self._encode(queries, docs)
        if self._graph is not None:
            session, inputs = self._graph
            return run_graph(session, inputs, encoded, 1, self.graph_max_tokens_per_batch,
                             self.pad_id, self.padding_side, progress)[:, 0]
        return score_batches(encoded, self._forward, self.device, self.max_tokens_per_batch,
                             self.pad_id, self.padding_side, progress)

    @property
    def compute(self) -> str:
        """The precision and runtime in use, as :func:`teachers.precision.compute_name` names it."""
        return compute_name(self.backend, self.dtype)

    @property
    def precision_pending(self) -> bool:
        """Whether the precision still waits to be measured (or resumed from a cache)."""
        return self._pending

    def settle_precision(self, queries: Sequence[str], docs: Sequence[str],
                         total_pairs: int | None = None) -> PrecisionChoice | None:
        """Choose the compute on a small sample of these pairs, once; None when already settled.

        ``dtype="auto"`` (with backend "auto" or "torch") times each candidate and keeps the
        fastest that ranks like fp32 (never one slower than fp32); an explicit dtype or
        graph backend is only checked against fp32. ``total_pairs``: how many pairs the run
        will score (default: these), which decides whether a graph runtime's export can pay
        off. The returned choice holds the sample's scores in the chosen compute, for the
        caller to keep. The first :meth:`score` calls this itself.
        """
        if not self._pending or not len(queries):
            return None
        with self._settle_lock:
            if not self._pending:  # another thread settled it meanwhile
                return None
            timed = self.requested_dtype == "auto" and self.requested_backend in ("auto", "torch")
            choice = choose_precision(self._score, self._cast, self._restore, self.dtype_candidates, queries, docs,
                                      self.name, timed=timed, timer=device_timer(self.device),
                                      total_pairs=total_pairs)
            self._settle(choice.dtype)
            self.precision = choice.to_dict()
        return choice

    def use_precision(self, compute: str) -> None:
        """Compute in ``compute`` (``bf16``, ``openvino:fp32``, ...) from now on, without
        measuring or checking it.

        For a compute chosen before: recorded in a cache this teacher resumes, or chosen by
        the process that hands work to this one (a scale-out worker).
        """
        backend, dtype = parse_compute(compute)
        if check_dtype_name(dtype) == "auto":
            raise ConfigError("use_precision needs a concrete dtype, not 'auto'", field="dtype")
        if backend != "torch" and backend not in self._graph_backends():
            raise ConfigError(f"{self.name}: cannot compute in {compute} here (install distill[onnx]; graph "
                              "runtimes run on a CPU)", field="backend")
        if dtype == "int8" and not self._int8_runnable():
            raise ConfigError(f"{self.name}: cannot compute in int8 here (a cross-encoder on a CPU)", field="dtype")
        if compute != self.compute:
            if self.compute != "fp32":
                self._restore()
            if compute != "fp32":
                self._cast(compute)
        self._settle(compute)

    def resume_precision(self, recorded: dict[str, Any]) -> bool:
        """Take over the compute in ``recorded`` (a cache's teacher fingerprint) when it names
        this very teacher otherwise, and this teacher may compute so; True when taken over.

        So a resumed run, and every worker of one, scores in the compute the cache was started
        with instead of measuring again (and perhaps choosing differently).
        """
        backend, dtype = recorded.get("backend", "torch"), recorded.get("dtype")
        compute = compute_name(backend, dtype)
        free = self.requested_dtype == "auto" and self.requested_backend == "auto"
        runnable = (backend == "torch" or backend in self._graph_backends()) and (
            dtype != "int8" or self._int8_runnable())
        if not self._pending or dtype not in DTYPES_IN_USE or not runnable:
            return False
        if not (free or compute in self.dtype_candidates):
            return False
        if {k: v for k, v in recorded.items() if k not in ("dtype", "backend")} != self._identity():
            return False
        self.use_precision(compute)
        return True

    def _int8_runnable(self) -> bool:
        return self.quantizable and int8_available(self.device.type)

    def _settle(self, compute: str) -> None:
        self.backend, self.dtype = parse_compute(compute)
        self._pending = False

    def _cast(self, compute: str) -> None:
        """From torch fp32 to ``compute``: the weights cast, or the model exported to a graph runtime."""
        backend, dtype = parse_compute(compute)
        if backend == "torch":
            if dtype == "int8":
                from distill.inference.quantize import dynamic_int8

                self.model = dynamic_int8(self.model)
            else:
                self.model.to(torch_dtype(dtype))
            return
        import torch

        if self._graph_dir is None:  # one export per model, shared by its runtimes and precisions, and processes
            from distill.inference.graph_cache import graph_folder

            self._graph_dir = graph_folder(self.model, type(self).__qualname__, owner=self)
        self._export_graph(self._graph_dir, backend)
        self._graph = open_session(self._graph_dir, backend, threads=torch.get_num_threads(),
                                   openvino_precision=OPENVINO_PRECISIONS[dtype])

    def _restore(self) -> None:
        """Back to torch fp32: close the graph session (the torch weights stayed fp32), or reload."""
        if self._graph is not None:
            self._graph = None
        else:
            self._load_fp32()

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
        :meth:`settle_precision` (or :meth:`score`, or :meth:`resume_precision`) first when
        more than one precision is possible.
        """
        if self._pending:
            raise RuntimeError(f"{self.name}: the precision ({'/'.join(self.dtype_candidates)}) is not chosen yet; "
                               "call settle_precision(queries, docs), resume_precision() or score() before "
                               "fingerprint()")
        runtime = {} if self.backend == "torch" else {"backend": self.backend}  # as caches without it recorded
        return {**self._identity(), "dtype": self.dtype, **runtime}

    def _identity(self) -> dict[str, Any]:
        """The fingerprint without the precision."""
        if self._source is None:
            if is_local(self.model_name_or_path):
                folder = Path(self.model_name_or_path).expanduser().resolve()
                self._source = {"model": str(folder), "weights_sha256": weights_sha256(folder)}
            else:
                self._source = {"model": self.model_name_or_path, "revision": self.resolved_revision() or "main"}
        return {"kind": self.kind, **self._source, "max_length": self.max_length, **self._scoring_options()}

    def resolved_revision(self) -> str | None:
        """The hub commit the loaded model came from (else the revision asked for; None locally)."""
        return getattr(self.model.config, "_commit_hash", None) or self.revision

    def get_config_dict(self) -> dict[str, Any]:
        """The options this teacher was built with (for manifests)."""
        return {
            "kind": self.kind, "model_name_or_path": self.model_name_or_path, "max_length": self.max_length,
            "dtype": self.requested_dtype, "backend": self.requested_backend, "device": str(self.device),
            "revision": self.revision,
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
        return (f"{type(self).__name__}({self.model_name_or_path!r}, max_length={self.max_length}, "
                f"compute={self.compute})")

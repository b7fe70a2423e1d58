"""A bi-encoder's document embeddings of a corpus, stored next to the model for the runtime.

A server restarted on the same corpus should not embed it again (SciFact's 5,183 documents
take minutes on 2 cores). :func:`corpus_embeddings` keeps them in the model folder as
``embeddings/<corpus hash>.npy`` (float32, NumPy's format, read without pickle) beside a
``.json`` that records what they were computed with: the model's weights (names, sizes and
modification times), the corpus hash, the shape. A file whose record does not match is
computed again; a folder that cannot be written keeps them in memory only, with a warning.

:func:`score_documents` scores one query's documents: stored embeddings for corpus rows,
new documents embedded on the fly, similarity by the model's own ``similarity_pairwise`` on
the same float32 vectors as :meth:`BiEncoderRanker.rerank <students.bi_encoder.BiEncoderRanker.rerank>`
uses, so known documents score exactly as offline.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from distill.core.io import atomic_path, write_json_atomic
from distill.core.manifest import frame_hash
from distill.core.schema import DOCID

if TYPE_CHECKING:
    from distill.cascade.runtime import Documents
    from distill.data.beir import Dataset
    from students.bi_encoder import BiEncoderRanker

log = logging.getLogger(__name__)

STORE_DIR = "embeddings"


def weights_record(folder: Path) -> list[list[Any]]:
    """Name, size and modification time of each weights file: a retrained folder is another model."""
    files = sorted(p for pattern in ("*.safetensors", "*.bin") for p in folder.rglob(pattern)
                   if STORE_DIR not in p.relative_to(folder).parts)
    return [[str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def encode(ranker: BiEncoderRanker, texts: list[str]) -> np.ndarray:
    """float32 embeddings of ``texts`` on the CPU (``BiEncoderRanker._encode``, one call at a time)."""
    return ranker._encode(texts).float().cpu().numpy()


def corpus_embeddings(ranker: BiEncoderRanker, corpus: Dataset) -> np.ndarray:
    """Embeddings of every document of ``corpus`` (its row order), from the store or computed and stored."""
    corpus_hash = frame_hash(corpus.corpus)
    folder = ranker.path / STORE_DIR
    array_path, record_path = folder / f"{corpus_hash}.npy", folder / f"{corpus_hash}.json"
    expected = {"corpus_hash": corpus_hash, "n_documents": corpus.corpus.height,
                "weights": weights_record(ranker.path)}
    if array_path.is_file() and record_path.is_file():
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
            if {k: record.get(k) for k in expected} == expected:
                embeddings = np.load(array_path, allow_pickle=False)
                if embeddings.shape[0] == corpus.corpus.height and embeddings.dtype == np.float32:
                    log.info("%s: %d document embeddings from %s", ranker.name, len(embeddings), array_path)
                    return embeddings
        except (OSError, ValueError) as err:
            log.warning("%s: stored embeddings unreadable (%s); embedding the corpus again", ranker.name, err)
    log.info("%s: embedding %d documents of the corpus", ranker.name, corpus.corpus.height)
    embeddings = encode(ranker, corpus.doc_texts(corpus.corpus[DOCID]))
    try:
        folder.mkdir(exist_ok=True)
        with atomic_path(array_path) as tmp, tmp.open("wb") as handle:
            np.save(handle, embeddings, allow_pickle=False)
        write_json_atomic(record_path, {**expected, "shape": list(embeddings.shape), "dtype": "float32"})
    except OSError as err:
        log.warning("%s: cannot store the embeddings in %s (%s); they live in memory only", ranker.name, folder, err)
    return embeddings


def score_documents(ranker: BiEncoderRanker, stored: np.ndarray | None, query: str, docs: Documents) -> np.ndarray:
    """Similarities of ``query`` and ``docs``: stored embeddings for corpus rows (``stored``),
    the others embedded now."""
    return score_requests(ranker, stored, [(query, docs)])[0]


def score_requests(ranker: BiEncoderRanker, stored: np.ndarray | None,
                   requests: Sequence[tuple[str, Documents]]) -> list[np.ndarray]:
    """Similarities of several queries' documents (serving's batch of concurrent requests): every query
    embedded in one call, every document without a stored embedding in one more, however many requests."""
    import torch

    queries = encode(ranker, [query for query, _ in requests])
    known = [docs.rows >= 0 if stored is not None else np.zeros(len(docs), dtype=bool) for _, docs in requests]
    new_texts = [text for (_, docs), k in zip(requests, known, strict=True)
                 for text, is_known in zip(docs.joined(), k, strict=True) if not is_known]
    new = encode(ranker, new_texts) if new_texts else np.empty((0, queries.shape[1]), dtype=np.float32)
    scores, used = [], 0
    for i, ((_, docs), k) in enumerate(zip(requests, known, strict=True)):
        embeddings = np.empty((len(docs), queries.shape[1]), dtype=np.float32)
        if k.any():
            embeddings[k] = stored[docs.rows[k]]
        fresh = int((~k).sum())
        embeddings[~k], used = new[used:used + fresh], used + fresh
        similarity = ranker.model.similarity_pairwise(torch.from_numpy(np.repeat(queries[i:i + 1], len(docs), axis=0)),
                                                      torch.from_numpy(embeddings))
        scores.append(similarity.float().numpy().astype(np.float64))
    return scores

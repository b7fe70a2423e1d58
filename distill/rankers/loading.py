"""Turn a ranker spec from the command line into a :class:`~distill.rankers.base.Ranker`.

A spec is one of

- ``bm25``: the candidate run's own scores (the first stage, as a baseline);
- a TREC run file: fixed scores, candidates the file lacks score ``-inf``;
- a teacher cache folder (``manifest.json`` of kind ``teacher-cache``);
- a model folder written by distill (``distill.json``), dispatched on its ``kind``;
- a plain SentenceTransformer folder (``modules.json``, model type not ``CrossEncoder``):
  a bi-encoder; a CrossEncoder or Hugging Face folder (``config.json``): a cross-encoder;
- a cascade spec (``.json``, from ``distill cascade build``).

On the command line a spec may carry a name: ``--ranker teacher=runs/teacher_cache``.
Model folders and cascades are loaded by kind through :data:`distill.core.registry.RANKERS`,
which the ``teachers`` and ``students`` packages fill, so this module never imports them and
a kind's libraries are imported only when a folder of that kind is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from distill.core.errors import InputError
from distill.core.io import read_json
from distill.core.outputs import CACHE_KIND, CACHE_MANIFEST
from distill.core.registry import RANKERS
from distill.core.schema import DOCID, QID, SCORE, require_columns
from distill.data.beir import Dataset
from distill.data.runs import read_run
from distill.rankers.base import BaseRanker

FIRST_STAGE = "bm25"


class RunRanker(BaseRanker):
    """A ranker with fixed scores: a run file's, or (``scores=None``) the candidate run's own.

    Candidates that ``scores`` lacks get ``-inf``, so they rank last instead of vanishing
    (ir-measures would otherwise score a shorter list).
    """

    def __init__(self, scores: pl.DataFrame | None = None, *, name: str = FIRST_STAGE,
                 source: str | None = None) -> None:
        if scores is not None:
            require_columns(scores, [QID, DOCID, SCORE], f"run {source or name}")
            scores = scores.select(QID, DOCID, pl.col(SCORE).cast(pl.Float64))
        self.scores = scores
        self.name = name
        self.source = source

    def rerank(self, dataset: Dataset, run: pl.DataFrame) -> pl.DataFrame:
        require_columns(run, [QID, DOCID], "candidate run")
        if self.scores is None:
            require_columns(run, [SCORE], "candidate run (its own scores are the first stage)")
            return run.select(QID, DOCID, pl.col(SCORE).cast(pl.Float64))
        return (
            run.select(QID, DOCID)
            .join(self.scores, on=[QID, DOCID], how="left", maintain_order="left")
            .with_columns(pl.col(SCORE).fill_null(float("-inf")))
        )

    def get_config_dict(self) -> dict[str, Any]:
        return {"kind": "run", "source": self.source or "candidate run scores"}

    def live(self) -> BaseRanker | None:
        """Itself for the candidates' own order; None for a run file, which cannot score new pairs."""
        return self if self.scores is None else None


def _read_json(path: Path) -> dict:
    try:
        body = read_json(path)
    except OSError as err:
        raise InputError(f"unreadable ({err.strerror})", path=path) from None
    if not isinstance(body, dict):
        raise InputError("expected a JSON object", path=path)
    return body


def model_kind(folder: str | Path) -> str | None:
    """The ``kind`` in a folder's ``distill.json`` (None when it has none)."""
    manifest = Path(folder) / "distill.json"
    return _read_json(manifest).get("kind") if manifest.is_file() else None


def parse_ranker_spec(text: str) -> tuple[str, str]:
    """Split ``name=spec``; a bare spec is named ``bm25`` or after its file or folder."""
    if "=" in text and not Path(text).exists():
        name, spec = (part.strip() for part in text.split("=", 1))
        if not name or not spec:
            raise InputError(f"expected NAME=SPEC, got {text!r}", field="--ranker")
        return name, spec
    if text == FIRST_STAGE:
        return FIRST_STAGE, text
    path = Path(text)
    return (path.stem if path.is_file() else path.name), text


def folder_kind(folder: Path) -> str:
    """The registry kind of a model folder: its ``distill.json`` kind, else ``sentence-transformer``
    or ``cross-encoder`` by its files."""
    kind = model_kind(folder)
    if kind is not None:
        return kind
    st_config = folder / "config_sentence_transformers.json"
    # sentence-transformers >= 4 saves CrossEncoders with modules.json too, marked by model_type;
    # older SentenceTransformer folders carry no model_type.
    cross = st_config.is_file() and _read_json(st_config).get("model_type") == "CrossEncoder"
    if (folder / "modules.json").is_file() and not cross:
        return "sentence-transformer"
    if (folder / "config.json").is_file():
        return "cross-encoder"
    raise InputError("not a ranker folder: no distill.json, manifest.json (teacher cache) or config.json",
                     path=folder)


def _load_folder(folder: Path, **kwargs: Any) -> BaseRanker:
    cache_manifest = folder / CACHE_MANIFEST
    if cache_manifest.is_file() and _read_json(cache_manifest).get("kind") == CACHE_KIND:
        return RANKERS.load(CACHE_KIND, folder, path=cache_manifest, **kwargs)  # distill.cache's CachedRanker
    kind = folder_kind(folder)
    manifest = folder / "distill.json"
    return RANKERS.load(kind, folder, path=manifest if manifest.is_file() else folder, **kwargs)


def load_ranker(spec: str, *, name: str | None = None, **kwargs: Any) -> BaseRanker:
    """Load the ranker a spec names (see the module docstring); ``kwargs`` go to model loaders.

    Without ``name``, ``spec`` may be ``name=spec``. The ranker's ``name`` is set to it.
    """
    if name is None:
        name, spec = parse_ranker_spec(spec)
    path = Path(spec)
    if spec == FIRST_STAGE:
        ranker: BaseRanker = RunRanker(name=name)
    elif path.is_file() and path.suffix == ".json":
        # named by its stages, e.g. "bm25 % 100 >> ce % 20 >> teacher"
        return RANKERS.load("cascade", path, path=path)
    elif path.is_file():
        ranker = RunRanker(read_run(path), name=name, source=str(path))
    elif path.is_dir():
        ranker = _load_folder(path, **kwargs)
    else:
        raise InputError(
            f"unknown ranker {spec!r}: expected {FIRST_STAGE!r}, a TREC run file, a cascade spec (.json), "
            "a teacher cache folder "
            f"or a model folder ({', '.join(RANKERS.kinds())})",
            field="--ranker",
        )
    ranker.name = name
    return ranker


def model_folder(spec: str) -> Path | None:
    """The folder a (name-less) spec loads a model from, for its size on disk; None for
    ``bm25``, run files and teacher caches, which hold no model."""
    path = Path(spec)
    if spec == FIRST_STAGE or not path.is_dir() or (path / CACHE_MANIFEST).is_file():
        return None
    return path

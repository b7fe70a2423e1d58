"""Turn a ranker spec from the command line into a :class:`~distill.ranking.Ranker`.

A spec is one of

- ``bm25``: the candidate run's own scores (the first stage, as a baseline);
- a TREC run file: fixed scores, candidates the file lacks score ``-inf``;
- a teacher cache folder (``manifest.json`` of kind ``teacher-cache``);
- a model folder written by distill (``distill.json``), dispatched on its ``kind``;
- a plain SentenceTransformer folder (``modules.json``, model type not ``CrossEncoder``):
  a bi-encoder; a CrossEncoder or Hugging Face folder (``config.json``): a cross-encoder.

On the command line a spec may carry a name: ``--ranker teacher=runs/teacher_cache``.
Model libraries are imported only when a model folder is loaded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from distill.cache import KIND as CACHE_KIND
from distill.cache import MANIFEST as CACHE_MANIFEST
from distill.cache import CachedRanker
from distill.data import Dataset
from distill.errors import InputError
from distill.ranking import Ranker
from distill.runs import read_run
from distill.schema import DOCID, QID, SCORE, require_columns

FIRST_STAGE = "bm25"


class RunRanker:
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


def _read_json(path: Path) -> dict:
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"unreadable JSON ({err})", path=path) from None
    if not isinstance(body, dict):
        raise InputError("expected a JSON object", path=path)
    return body


def model_kind(folder: str | Path) -> str | None:
    """The ``kind`` in a folder's ``distill.json`` (None when it has none)."""
    manifest = Path(folder) / "distill.json"
    return _read_json(manifest).get("kind") if manifest.is_file() else None


def _cross_encoder(path: Path, **kwargs: Any) -> Ranker:
    from teachers import CrossEncoderTeacher

    return CrossEncoderTeacher(str(path), **kwargs)


def _bi_encoder(path: Path, **kwargs: Any) -> Ranker:
    from students.bi_encoder import BiEncoderRanker

    return BiEncoderRanker(path, **kwargs)


def _lightgbm(path: Path, **kwargs: Any) -> Ranker:
    from students.lightgbm import LightGBMRanker

    return LightGBMRanker(path, **kwargs)


# The ``kind`` of a distill model folder -> how to load it as a ranker.
MODEL_KINDS: dict[str, Callable[..., Ranker]] = {
    "teacher": _cross_encoder,
    "cross-encoder-student": _cross_encoder,
    "bi-encoder-student": _bi_encoder,
    "lightgbm-student": _lightgbm,
}


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


def _load_folder(folder: Path, **kwargs: Any) -> Ranker:
    cache_manifest = folder / CACHE_MANIFEST
    if cache_manifest.is_file() and _read_json(cache_manifest).get("kind") == CACHE_KIND:
        return CachedRanker(folder, **kwargs)
    kind = model_kind(folder)
    if kind is not None:
        if kind not in MODEL_KINDS:
            raise InputError(f"unknown model kind {kind!r}; known: {sorted(MODEL_KINDS)}",
                             path=folder / "distill.json", field="kind")
        return MODEL_KINDS[kind](folder, **kwargs)
    st_config = folder / "config_sentence_transformers.json"
    # sentence-transformers >= 4 saves CrossEncoders with modules.json too, marked by model_type;
    # older SentenceTransformer folders carry no model_type.
    cross = st_config.is_file() and _read_json(st_config).get("model_type") == "CrossEncoder"
    if (folder / "modules.json").is_file() and not cross:
        return _bi_encoder(folder, **kwargs)
    if (folder / "config.json").is_file():
        return _cross_encoder(folder, **kwargs)
    raise InputError("not a ranker folder: no distill.json, manifest.json (teacher cache) or config.json",
                     path=folder)


def load_ranker(spec: str, *, name: str | None = None, **kwargs: Any) -> Ranker:
    """Load the ranker a spec names (see the module docstring); ``kwargs`` go to model loaders.

    Without ``name``, ``spec`` may be ``name=spec``. The ranker's ``name`` is set to it.
    """
    if name is None:
        name, spec = parse_ranker_spec(spec)
    path = Path(spec)
    if spec == FIRST_STAGE:
        ranker: Ranker = RunRanker(name=name)
    elif path.is_file() and path.suffix == ".json":
        from distill.cascade import Cascade

        return Cascade.read_spec(path)  # named by its stages, e.g. "bm25 % 100 >> ce % 20 >> teacher"
    elif path.is_file():
        ranker = RunRanker(read_run(path), name=name, source=str(path))
    elif path.is_dir():
        ranker = _load_folder(path, **kwargs)
    else:
        raise InputError(
            f"unknown ranker {spec!r}: expected {FIRST_STAGE!r}, a TREC run file, a cascade spec (.json), "
            "a teacher cache folder "
            f"or a model folder ({', '.join(sorted(MODEL_KINDS))}, CrossEncoder, SentenceTransformer)",
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


def lightgbm_feature_importance(folder: str | Path) -> dict[str, float]:
    """Total gain of each feature of a ``lightgbm-student`` folder's ``model.txt``, by name."""
    import lightgbm

    booster = lightgbm.Booster(model_file=str(Path(folder) / "model.txt"))
    gains = booster.feature_importance(importance_type="gain")
    return {name: float(gain) for name, gain in zip(booster.feature_name(), gains, strict=True)}

"""distill: knowledge distillation of search rerankers.

The public API, imported on first use (module ``__getattr__``), so ``import distill`` stays
light (no torch, no model library) and each name means one thing: none is also the name of
a submodule (``distill.evaluate`` is the function; its module is :mod:`distill.evaluation`).

- data: :func:`load_beir`, :func:`bm25_run`, :func:`read_run`, :func:`write_run`
- teacher: :func:`score_teacher` into a :class:`TeacherCache`
- students: :func:`train_student`
- rankers: :func:`load_ranker`, :class:`BaseRanker`, :class:`Cascade`, :func:`build_cascade`
- evaluation: :func:`evaluate`, :func:`metric_means`, :func:`per_query`
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "bm25_run": "distill.bm25",
    "CachedRanker": "distill.cache", "TeacherCache": "distill.cache", "merge_caches": "distill.cache",
    "read_scores": "distill.cache",
    "Cascade": "distill.cascade", "Stage": "distill.cascade", "StageCost": "distill.cascade",
    "stage": "distill.cascade",
    "BudgetShare": "distill.cascade_search", "CascadeBuild": "distill.cascade_search",
    "CascadeBuildConfig": "distill.cascade_search",
    "build_cascade": "distill.cascade_search",
    "Dataset": "distill.data", "load_beir": "distill.data", "load_corpus": "distill.data",
    "load_qrels": "distill.data", "load_queries": "distill.data",
    "CacheMismatchError": "distill.errors", "ConfigError": "distill.errors", "DistillError": "distill.errors",
    "InputError": "distill.errors",
    "EvaluateConfig": "distill.evaluation", "EvaluationResult": "distill.evaluation", "evaluate": "distill.evaluation",
    "metric_means": "distill.metrics", "per_query": "distill.metrics",
    "load_ranker": "distill.rankers",
    "BaseRanker": "distill.ranking",
    "RANKERS": "distill.registry", "TEACHERS": "distill.registry",
    "read_run": "distill.runs", "write_run": "distill.runs",
    "score_into_cache": "distill.scoring",
    "score_teacher": "teachers.scoring",
    "train_student": "students.train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'distill' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

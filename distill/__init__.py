"""distill: knowledge distillation of search rerankers.

The public API, imported on first use (module ``__getattr__``), so ``import distill`` stays
light (no torch, no model library) and each name means one thing: none is also the name of
a submodule (``distill.evaluate`` is the function; its module is :mod:`distill.evaluation.runner`).

- data: :func:`load_beir`, :func:`bm25_run`, :func:`read_run`, :func:`write_run`
- teacher: :func:`score_teacher` into a :class:`TeacherCache`
- students: :func:`train_student`
- rankers: :func:`load_ranker`, :class:`BaseRanker`, :class:`Cascade`, :func:`build_cascade`
- evaluation: :func:`evaluate`, :func:`metric_means`, :func:`per_query`
"""

from __future__ import annotations

from distill import _moved
from distill.core.lazy import lazy_names

__version__ = "0.1.0"
_moved.install()  # old module paths (distill.cache_files, teachers.graph, ...) stay importable

# public name -> the module that defines it
_EXPORTS = {
    "bm25_run": "distill.data.bm25",
    "CachedRanker": "distill.cache.store", "TeacherCache": "distill.cache.store", "merge_caches": "distill.cache.store",
    "read_scores": "distill.cache.store",
    "Cascade": "distill.cascade.model", "Stage": "distill.cascade.model", "StageCost": "distill.cascade.model",
    "stage": "distill.cascade.model",
    "BudgetShare": "distill.cascade.search", "CascadeBuild": "distill.cascade.search",
    "CascadeBuildConfig": "distill.cascade.search",
    "build_cascade": "distill.cascade.search",
    "Dataset": "distill.data.beir", "load_beir": "distill.data.beir", "load_corpus": "distill.data.beir",
    "load_qrels": "distill.data.beir", "load_queries": "distill.data.beir",
    "CacheMismatchError": "distill.core.errors", "ConfigError": "distill.core.errors",
    "DistillError": "distill.core.errors", "InputError": "distill.core.errors",
    "EvaluateConfig": "distill.evaluation.runner", "EvaluationResult": "distill.evaluation.runner",
    "evaluate": "distill.evaluation.runner",
    "metric_means": "distill.evaluation.metrics", "per_query": "distill.evaluation.metrics",
    "load_ranker": "distill.rankers.loading",
    "BaseRanker": "distill.rankers.base",
    "RANKERS": "distill.core.registry", "TEACHERS": "distill.core.registry",
    "read_run": "distill.data.runs", "write_run": "distill.data.runs",
    "score_into_cache": "distill.cache.scoring",
    "score_teacher": "teachers.scoring",
    "train_student": "students.train",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_names(__name__, _EXPORTS)

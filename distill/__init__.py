"""distill: knowledge distillation of search rerankers."""

from distill.bm25 import bm25_run
from distill.cache import CachedRanker, TeacherCache, merge_caches, read_scores
from distill.cascade import Cascade, Stage, stage
from distill.data import Dataset, load_beir, load_corpus, load_qrels, load_queries
from distill.errors import CacheMismatchError, ConfigError, DistillError, InputError
from distill.metrics import evaluate, per_query
from distill.rankers import load_ranker
from distill.ranking import Ranker
from distill.runs import read_run, write_run
from distill.scoring import score_into_cache

__version__ = "0.1.0"

__all__ = [
    "CacheMismatchError", "CachedRanker", "Cascade", "ConfigError", "Dataset", "DistillError", "InputError",
    "Ranker", "Stage", "TeacherCache", "bm25_run", "evaluate", "load_beir", "load_corpus", "load_qrels",
    "load_queries", "load_ranker", "merge_caches", "per_query", "read_run", "read_scores", "score_into_cache",
    "stage", "write_run",
]

"""distill: knowledge distillation of search rerankers."""

from distill.data import Dataset, load_beir, load_corpus, load_qrels, load_queries
from distill.errors import CacheMismatchError, ConfigError, DistillError, InputError
from distill.runs import read_run, write_run

__version__ = "0.1.0"

__all__ = [
    "CacheMismatchError", "ConfigError", "Dataset", "DistillError", "InputError",
    "load_beir", "load_corpus", "load_qrels", "load_queries", "read_run", "write_run",
]

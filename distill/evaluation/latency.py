"""Reranking latency per query, model size and parameter count.

One query's candidates (its top ``k``) are reranked per call and timed with
``time.perf_counter``; slicing the run happens before the clock starts. One-off work a
ranker offers through ``prepare(dataset)`` (e.g. a bi-encoder's document embeddings) runs
before timing when ``prepare`` is true, and its duration is recorded apart.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from distill.core.errors import ConfigError, InputError
from distill.core.io import read_json, write_json_atomic
from distill.core.schema import QID, SCORE, cut, require_columns
from distill.data.beir import Dataset
from distill.rankers.base import BaseRanker, Ranker, settle_precision


@dataclass
class LatencyResult:
    """Latency of reranking ``k`` candidates for one query, in milliseconds.

    ``n_parameters``: torch parameters (sum of ``numel``) or, for LightGBM, the number of
    leaves over all trees (one stored value each); 0 for rankers without a model.
    ``size_bytes``: bytes of the model folder (0 without one). ``threads``: torch's
    intra-op threads during the measurement (None when torch was not loaded). ``prepare_s``:
    the one-off ``prepare`` in this process; near 0 when its work was already done, e.g. corpus
    embeddings a bi-encoder of the same folder computed before.
    """

    ranker: str
    prepared: bool
    k: int
    n_queries: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    pairs_per_s: float
    n_parameters: int
    size_bytes: int
    prepare_s: float
    threads: int | None
    cpu_count: int | None


def measure_latency(ranker: Ranker, dataset: Dataset, run: pl.DataFrame, k: int = 100, n_queries: int = 50,
                    warmup: int = 3, prepare: bool = True, threads: int | None = None,
                    model_path: str | Path | None = None, seed: int = 0, name: str | None = None) -> LatencyResult:
    """Time ``ranker.rerank`` on the top ``k`` candidates of ``n_queries`` queries of ``run``.

    Queries are a seeded sample of the run's queries that ``dataset`` has; the first
    ``warmup`` of them are reranked once untimed (lazy initialisation, caches). ``threads``
    sets torch's thread count for the measurement (restored afterwards). ``name`` is what the
    result calls the ranker (default: its ``name``); give the name the evaluation knows it by,
    since reports join latency to metrics on it, and a cascade's own name is its stages
    (``bm25 % 100 >> lightgbm``), not the label it was evaluated under.
    """
    if k < 1 or n_queries < 1 or warmup < 0:
        raise ConfigError(f"need k >= 1, n_queries >= 1, warmup >= 0; got {k}, {n_queries}, {warmup}")
    require_columns(run, [QID, SCORE], "candidate run")
    candidates = cut(run.join(dataset.queries.select(QID), on=QID, how="semi"), k)
    qids = candidates[QID].unique().sort()
    if qids.is_empty():
        raise InputError("the candidate run has no query of the dataset")
    qids = qids.sample(min(n_queries, len(qids)), seed=seed).sort().to_list()
    by_query = candidates.partition_by(QID, as_dict=True)
    lists = [by_query[(qid,)] for qid in qids]

    settle_precision(ranker, dataset, candidates)  # not on the first query's few pairs
    with _torch_threads(threads) as used_threads:
        prepare_s = 0.0
        if prepare:
            start = time.perf_counter()
            ranker.prepare(dataset)
            prepare_s = time.perf_counter() - start
        for query_run in lists[:warmup]:
            ranker.rerank(dataset, query_run)
        times = np.empty(len(lists))
        for i, query_run in enumerate(lists):
            start = time.perf_counter()
            ranker.rerank(dataset, query_run)
            times[i] = time.perf_counter() - start

    n_pairs = sum(q.height for q in lists)
    ms = times * 1000.0
    return LatencyResult(
        ranker=name or ranker.name or type(ranker).__name__,
        prepared=prepare,
        k=k, n_queries=len(lists),
        p50_ms=float(np.percentile(ms, 50)), p95_ms=float(np.percentile(ms, 95)),
        p99_ms=float(np.percentile(ms, 99)), mean_ms=float(ms.mean()),
        pairs_per_s=float(n_pairs / times.sum()) if times.sum() > 0 else float("inf"),
        n_parameters=parameter_count(ranker), size_bytes=size_on_disk(model_path),
        prepare_s=prepare_s, threads=used_threads, cpu_count=os.cpu_count(),
    )


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[int | None]:
    """Set torch's intra-op threads for the block; yield the count in effect (None without torch)."""
    if threads is None:
        torch = sys.modules.get("torch")
        yield None if torch is None else torch.get_num_threads()
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


def _held_models(obj: Any, depth: int = 3) -> Iterator[Any]:
    """``obj`` and what it holds in attributes, lists and tuples, following rankers and
    distill's own objects (cascade stages) ``depth`` levels down."""
    yield obj
    if depth == 0:
        return
    follow = isinstance(obj, BaseRanker) or type(obj).__module__.split(".")[0] in ("distill", "students", "teachers")
    values = list(vars(obj).values()) if follow and hasattr(obj, "__dict__") else []
    for value in values:
        for item in value if isinstance(value, (list, tuple)) else [value]:
            yield from _held_models(item, depth - 1)


def parameter_count(ranker: Ranker) -> int:
    """Learned parameters of the models a ranker holds (see :class:`LatencyResult`).

    Rankers expose no common model attribute, so the ranker's attributes are searched for
    torch modules and LightGBM boosters; libraries not loaded yet cannot be held and are
    not imported.
    """
    torch, lightgbm = sys.modules.get("torch"), sys.modules.get("lightgbm")
    seen: set[int] = set()
    total = 0
    for obj in _held_models(ranker):
        if torch is not None and isinstance(obj, torch.nn.Module):
            for param in obj.parameters():
                if id(param) not in seen:
                    seen.add(id(param))
                    total += param.numel()
        elif lightgbm is not None and isinstance(obj, lightgbm.Booster) and id(obj) not in seen:
            seen.add(id(obj))
            total += sum(tree["num_leaves"] for tree in obj.dump_model()["tree_info"])
    return total


def size_on_disk(path: str | Path | None) -> int:
    """Bytes of a file, or of every file under a folder; 0 for None."""
    if path is None:
        return 0
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def save_latency(results: dict[str, LatencyResult], path: str | Path) -> None:
    """Write latency results (by label) as JSON, atomically."""
    write_json_atomic(path, {label: asdict(result) for label, result in results.items()})


def load_latency(path: str | Path) -> dict[str, LatencyResult]:
    """Read what :func:`save_latency` wrote; a missing file means no measurement."""
    path = Path(path)
    if not path.is_file():
        return {}
    body = read_json(path)
    return {label: LatencyResult(**fields) for label, fields in body.items()}

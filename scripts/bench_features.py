"""Throughput of :meth:`distill.features.FeatureExtractor.transform` on one core.

    python scripts/bench_features.py --data /work/shared/data/scifact [--quick]

Candidates are the BM25 top-100 of the test split; the corpus index (``fit``) is built once
and timed apart, since it is a one-off per corpus. Prints (query, document) pairs per second.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "POLARS_MAX_THREADS"):
    os.environ[_var] = "1"  # one core; must be set before NumPy and polars start their pools

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="BEIR folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--k", type=int, default=100, help="BM25 candidates per query")
    parser.add_argument("--quick", action="store_true", help="first 100 queries, 3 repeats")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    from distill.bm25 import bm25_run
    from distill.data import load_beir
    from distill.features import FeatureExtractor

    dataset = load_beir(args.data, args.split)
    if args.quick:
        dataset.queries = dataset.queries.head(100)
    repeats = 3 if args.quick else args.repeats
    run = bm25_run(dataset, args.k)

    start = time.perf_counter()
    extractor = FeatureExtractor().fit(dataset)
    fit_s = time.perf_counter() - start

    extractor.transform(dataset, run)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        features = extractor.transform(dataset, run)
        times.append(time.perf_counter() - start)
    best, median = min(times), sorted(times)[len(times) // 2]
    print(f"{dataset.name}/{args.split}: {dataset.queries.height} queries, {run.height} pairs, "
          f"{features.shape[1]} features; fit {fit_s:.2f} s")
    print(f"transform: median {median * 1e3:.1f} ms = {run.height / median:,.0f} pairs/s "
          f"(best {run.height / best:,.0f} pairs/s, {repeats} repeats, 1 thread)")


if __name__ == "__main__":
    main()

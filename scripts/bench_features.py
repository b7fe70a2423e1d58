"""LightGBM student latency per query (features included) and feature throughput, on one core.

    python scripts/bench_features.py --data /work/shared/data/scifact [--quick]

A LightGBM student is trained on the train split's BM25 top-100 (the teacher's place taken by
BM25's own scores, half of each judged query's grades from its qrels; the default config
with early stopping, so a model of the usual size), then each test query's top ``--k`` is
scored, one query per call, by every path below, interleaved query by query so that they
share whatever else runs on the machine:

- ``old rerank``: the code before the per-query path (``--baseline-ref``, read from git):
  ``FeatureExtractor.transform`` on the query's run, then ``booster.predict``;
- ``rerank``: ``LightGBMRanker.rerank`` on the query's run (what ``distill evaluate --latency``
  and ``distill cascade run`` time);
- ``score_documents``: the runtime's call (:mod:`distill.cascade.runtime`), documents by corpus row;
- ``score_documents, new texts``: the same documents sent as texts, analysed on the fly;
- ``cascade.rank``: ``bm25 % k >> lightgbm`` through :meth:`Cascade.rank`, documents as
  ``{"id", "score"}`` objects (input checks and the final ranking included);
- ``features only``: ``FeatureExtractor.features`` (the lexical features of ``score_documents``);
- ``trees only``: the student's ``booster.predict`` on precomputed features.

Each call is timed in wall-clock time and in the thread's CPU time (``time.thread_time``):
on a machine whose cores other jobs share, a call's wall time includes the time it waited
for a core, its CPU time does not. The paths' order rotates from one repeat to the next.
Then the batch throughput of ``transform`` (all test queries at once), as before.
Every figure is a ratio against ``old rerank`` measured in the same run.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "POLARS_MAX_THREADS"):
    os.environ[_var] = "1"  # one core; must be set before NumPy and polars start their pools

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

if TYPE_CHECKING:
    import polars as pl

    from distill.cascade.model import Cascade
    from distill.cascade.runtime import RuntimeCorpus
    from distill.data.beir import Dataset
    from students.lightgbm import LightGBMRanker

REPO = Path(__file__).resolve().parent.parent
BASELINE_REF = "984fc4a"  # the last commit before the per-query path


def load_old_features(ref: str):
    """``distill/features.py`` as of ``ref``, imported as its own module."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{ref}:distill/features.py"], check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "old_features.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_features", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_features"] = module
    spec.loader.exec_module(module)
    return module


def train_student(data: Path, k: int, out: Path, quick: bool, n_estimators: int | None) -> Path:
    """A LightGBM student on the train split (see the module docstring); reused when ``out`` exists."""
    if (out / "model.txt").is_file():
        return out
    import polars as pl

    from distill.data.beir import load_beir
    from distill.data.bm25 import bm25_run
    from students.lightgbm import LightGBMConfig, train_lightgbm_student

    train = load_beir(data, "train")
    if quick:
        train.queries = train.queries.head(300)
    run = bm25_run(train, k)
    teacher = run.select("qid", "docid", pl.col("score").cast(pl.Float32))
    config = LightGBMConfig(qrels_weight=0.5, num_threads=1)
    if n_estimators is not None:  # exactly that many trees: no queries held out, no early stopping
        config = LightGBMConfig(qrels_weight=0.5, num_threads=1, n_estimators=n_estimators, valid_fraction=0.0)
    return train_lightgbm_student(train, run, teacher, out, config)


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile of durations in seconds, in milliseconds."""
    import numpy as np

    return float(np.percentile(np.asarray(values) * 1000.0, q))


def parse_args() -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="BEIR folder")
    parser.add_argument("--k", type=int, default=100, help="BM25 candidates per query")
    parser.add_argument("--queries", type=int, default=300, help="test queries timed")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per query and path")
    parser.add_argument("--model", type=Path, default=Path("bench_out/bench_features/lightgbm"),
                        help="the student's folder (trained there when missing)")
    parser.add_argument("--n-estimators", type=int, default=None,
                        help="train exactly this many trees (default: LightGBMConfig's, with early stopping)")
    parser.add_argument("--baseline-ref", default=BASELINE_REF, help="git commit of the old path")
    parser.add_argument("--quick", action="store_true", help="50 queries, 3 repeats, a smaller training set")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    return parser.parse_args()


@dataclass
class Bench:
    """What every timed path shares: the test split, its BM25 run and the student in each of its forms."""

    dataset: Dataset
    run: pl.DataFrame  # BM25's top k, as a cascade's stage sees it: scores, no ranks
    ranker: LightGBMRanker
    old_extractor: Any  # ``FeatureExtractor`` of the baseline commit's ``distill/features.py``
    corpus: RuntimeCorpus
    cascade: Cascade  # bm25 % k >> lightgbm
    texts: dict[str, str]  # query text by qid
    by_id: dict[str, tuple[str, str]]  # (title, text) by docid
    train_s: float
    fit_s: float

    def old_rerank(self, part: pl.DataFrame) -> pl.DataFrame:
        """LightGBMRanker.rerank at the baseline commit: the old batch features, then the trees."""
        import numpy as np
        import polars as pl

        features = np.hstack([self.old_extractor.transform(self.dataset, part), np.zeros((part.height, 0))])
        scores = self.ranker.booster.predict(features, num_threads=1)
        return part.select("qid", "docid").with_columns(pl.Series("score", scores, dtype=pl.Float64))


def load_bench(args: argparse.Namespace) -> Bench:
    """Train (or reuse) the student, load the old path and the test split, and prepare every new path."""
    from distill.cascade.model import stage
    from distill.cascade.runtime import RuntimeCorpus
    from distill.data.beir import load_beir
    from distill.data.bm25 import bm25_run
    from distill.rankers.loading import RunRanker
    from students.lightgbm import LightGBMRanker

    start = time.perf_counter()
    model = train_student(args.data, args.k, args.model, args.quick, args.n_estimators)
    train_s = time.perf_counter() - start
    old = load_old_features(args.baseline_ref)
    dataset = load_beir(args.data, "test")
    run = bm25_run(dataset, args.k).drop("rank")
    ranker = LightGBMRanker(model, num_threads=1)
    start = time.perf_counter()
    ranker.prepare(dataset)
    fit_s = time.perf_counter() - start
    old_extractor = old.FeatureExtractor.load(model)
    corpus = RuntimeCorpus(dataset.corpus)
    cascade = stage("bm25", RunRanker(), "bm25") % args.k >> stage("lightgbm", ranker, str(model))
    cascade.prepare_runtime(dataset.corpus)  # prepares the ranker's runtime path too
    texts = dict(zip(dataset.queries["qid"].to_list(), dataset.queries["text"].to_list(), strict=True))
    by_id = dict(zip(corpus.ids, zip(corpus.titles, corpus.texts, strict=True), strict=True))
    return Bench(dataset, run, ranker, old_extractor, corpus, cascade, texts, by_id, train_s, fit_s)


def query_calls(bench: Bench, part: pl.DataFrame) -> tuple[dict[str, tuple[Callable, tuple]], bool]:
    """Every path's call on one query, its inputs bound now; and whether the new paths score as the old one."""
    import numpy as np

    from distill.cascade.runtime import parse_documents

    ranker, dataset = bench.ranker, bench.dataset
    query, docids, scores = bench.texts[part["qid"][0]], part["docid"].to_list(), part["score"].to_list()
    docs = parse_documents([{"id": d, "score": s} for d, s in zip(docids, scores, strict=True)], bench.corpus)
    as_texts = parse_documents([{"id": d, "title": bench.by_id[d][0], "text": bench.by_id[d][1], "score": s}
                                for d, s in zip(docids, scores, strict=True)], None)
    requests = [{"id": d, "score": s} for d, s in zip(docids, scores, strict=True)]
    features = ranker._one_query(dataset, part)
    calls = {  # (function, arguments)
        "old rerank": (bench.old_rerank, (part,)),
        "rerank": (ranker.rerank, (dataset, part)),
        "score_documents": (ranker.score_documents, (query, docs)),
        "score_documents, new texts": (ranker.score_documents, (query, as_texts)),
        "cascade.rank": (bench.cascade.rank, (query, requests)),
        "features only": (ranker._extractor.features, (query, docs.rows, (), (), docs.first_stage)),
        "trees only": (ranker._predict, (features,)),
    }
    baseline = bench.old_rerank(part)["score"].to_numpy()
    agree = bool(np.array_equal(baseline, ranker.rerank(dataset, part)["score"].to_numpy())
                 and np.array_equal(baseline, ranker.score_documents(query, docs))
                 and np.allclose(baseline, ranker.score_documents(query, as_texts), rtol=0, atol=1e-12))
    return calls, agree


def time_paths(bench: Bench, parts: list[pl.DataFrame], repeats: int) -> tuple[dict, dict, bool]:
    """Wall and thread-CPU seconds of every call, by path, the paths' order rotating from repeat to repeat;
    and whether every query's scores agreed with the old path."""
    paths: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    agree = True
    for part in parts:
        calls, agreed = query_calls(bench, part)
        agree &= agreed
        names = list(calls)
        for repeat in range(repeats):
            for name in names[repeat % len(names):] + names[: repeat % len(names)]:
                call, call_args = calls[name]
                t0, c0 = time.perf_counter(), time.thread_time()
                call(*call_args)
                c1, t1 = time.thread_time(), time.perf_counter()
                paths.setdefault(name, []).append(t1 - t0)
                cpu.setdefault(name, []).append(c1 - c0)
    return paths, cpu, agree


def latency_rows(paths: dict[str, list[float]], cpu: dict[str, list[float]]) -> list[dict]:
    """Per path: p50/p95 wall and p50 CPU milliseconds, and the speed-ups against ``old rerank``."""
    old_p50, old_cpu = percentile(paths["old rerank"], 50), percentile(cpu["old rerank"], 50)
    return [{"path": name, "p50_ms": percentile(t, 50), "p95_ms": percentile(t, 95),
             "cpu_p50_ms": percentile(cpu[name], 50), "speedup_p50": old_p50 / percentile(t, 50),
             "cpu_speedup_p50": old_cpu / percentile(cpu[name], 50)} for name, t in paths.items()]


def print_rows(rows: list[dict]) -> None:
    """The latency table (markdown)."""
    print("| path | p50 ms | p95 ms | speed-up vs old (p50) | CPU p50 ms | speed-up vs old (CPU p50) |\n"
          "|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['path']} | {row['p50_ms']:.3f} | {row['p95_ms']:.3f} | {row['speedup_p50']:.2f}x | "
              f"{row['cpu_p50_ms']:.3f} | {row['cpu_speedup_p50']:.2f}x |")


def transform_throughput(bench: Bench, parts: list[pl.DataFrame], repeats: int) -> tuple[int, float]:
    """Pairs and median seconds of ``transform`` on all the timed queries at once (the batch path), printed."""
    import polars as pl

    times = []
    transform_run = pl.concat(parts)
    for _ in range(repeats):
        t0 = time.perf_counter()
        bench.ranker._extractor.transform(bench.dataset, transform_run)
        times.append(time.perf_counter() - t0)
    median = sorted(times)[len(times) // 2]
    print(f"transform (batch of {transform_run.height} pairs): median {median * 1e3:.1f} ms = "
          f"{transform_run.height / median:,.0f} pairs/s")
    return transform_run.height, median


def main() -> None:
    """Time every path on the test queries, print the tables and, with ``--out``, write them as JSON."""
    args = parse_args()
    n_queries, repeats = (50, 3) if args.quick else (args.queries, args.repeats)
    bench = load_bench(args)
    parts = bench.run.partition_by("qid", maintain_order=True)[:n_queries]
    paths, cpu, agree = time_paths(bench, parts, repeats)
    rows = latency_rows(paths, cpu)
    trees = bench.ranker.booster.dump_model()["tree_info"]
    print(f"{bench.dataset.name}/test: {len(parts)} queries x top-{args.k}, {repeats} calls each per path, 1 thread; "
          f"model: {len(trees)} trees, {sum(t['num_leaves'] for t in trees)} leaves "
          f"(trained in {bench.train_s:.1f} s); "
          f"corpus statistics loaded in {bench.fit_s:.2f} s; scores equal to the old path: {agree}")
    print_rows(rows)
    pairs, median = transform_throughput(bench, parts, repeats)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": rows, "agree": agree, "queries": len(parts), "k": args.k,
                                        "repeats": repeats, "trees": len(trees),
                                        "transform_pairs_per_s": pairs / median}, indent=2))


if __name__ == "__main__":
    main()

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
from pathlib import Path  # noqa: E402

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


def main() -> None:
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
    args = parser.parse_args()
    n_queries, repeats = (50, 3) if args.quick else (args.queries, args.repeats)

    import numpy as np
    import polars as pl

    from distill.cascade.model import stage
    from distill.cascade.runtime import RuntimeCorpus, parse_documents
    from distill.data.beir import load_beir
    from distill.data.bm25 import bm25_run
    from distill.rankers.loading import RunRanker
    from students.lightgbm import LightGBMRanker

    start = time.perf_counter()
    model = train_student(args.data, args.k, args.model, args.quick, args.n_estimators)
    train_s = time.perf_counter() - start
    old = load_old_features(args.baseline_ref)
    dataset = load_beir(args.data, "test")
    run = bm25_run(dataset, args.k).drop("rank")  # as a cascade's stage sees it: scores, no ranks
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
    booster = ranker.booster

    def old_rerank(part: pl.DataFrame) -> pl.DataFrame:  # LightGBMRanker.rerank at the baseline commit
        features = np.hstack([old_extractor.transform(dataset, part), np.zeros((part.height, 0))])
        scores = booster.predict(features, num_threads=1)
        return part.select("qid", "docid").with_columns(pl.Series("score", scores, dtype=pl.Float64))

    parts = run.partition_by("qid", maintain_order=True)[:n_queries]
    paths: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    agree = True
    for part in parts:
        query, docids, scores = texts[part["qid"][0]], part["docid"].to_list(), part["score"].to_list()
        docs = parse_documents([{"id": d, "score": s} for d, s in zip(docids, scores, strict=True)], corpus)
        as_texts = parse_documents([{"id": d, "title": by_id[d][0], "text": by_id[d][1], "score": s}
                                    for d, s in zip(docids, scores, strict=True)], None)
        requests = [{"id": d, "score": s} for d, s in zip(docids, scores, strict=True)]
        features = ranker._one_query(dataset, part)
        calls = {  # (function, arguments): this query's inputs bound now
            "old rerank": (old_rerank, (part,)),
            "rerank": (ranker.rerank, (dataset, part)),
            "score_documents": (ranker.score_documents, (query, docs)),
            "score_documents, new texts": (ranker.score_documents, (query, as_texts)),
            "cascade.rank": (cascade.rank, (query, requests)),
            "features only": (ranker._extractor.features, (query, docs.rows, (), (), docs.first_stage)),
            "trees only": (ranker._predict, (features,)),
        }
        baseline = old_rerank(part)["score"].to_numpy()
        agree &= bool(np.array_equal(baseline, ranker.rerank(dataset, part)["score"].to_numpy())
                      and np.array_equal(baseline, ranker.score_documents(query, docs))
                      and np.allclose(baseline, ranker.score_documents(query, as_texts), rtol=0, atol=1e-12))
        names = list(calls)
        for repeat in range(repeats):
            for name in names[repeat % len(names):] + names[: repeat % len(names)]:
                call, call_args = calls[name]
                t0, c0 = time.perf_counter(), time.thread_time()
                call(*call_args)
                c1, t1 = time.thread_time(), time.perf_counter()
                paths.setdefault(name, []).append(t1 - t0)
                cpu.setdefault(name, []).append(c1 - c0)

    old_p50, old_cpu = percentile(paths["old rerank"], 50), percentile(cpu["old rerank"], 50)
    rows = [{"path": name, "p50_ms": percentile(t, 50), "p95_ms": percentile(t, 95),
             "cpu_p50_ms": percentile(cpu[name], 50), "speedup_p50": old_p50 / percentile(t, 50),
             "cpu_speedup_p50": old_cpu / percentile(cpu[name], 50)} for name, t in paths.items()]
    trees = booster.dump_model()["tree_info"]
    print(f"{dataset.name}/test: {len(parts)} queries x top-{args.k}, {repeats} calls each per path, 1 thread; "
          f"model: {len(trees)} trees, {sum(t['num_leaves'] for t in trees)} leaves (trained in {train_s:.1f} s); "
          f"corpus statistics loaded in {fit_s:.2f} s; scores equal to the old path: {agree}")
    print("| path | p50 ms | p95 ms | speed-up vs old (p50) | CPU p50 ms | speed-up vs old (CPU p50) |\n"
          "|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['path']} | {row['p50_ms']:.3f} | {row['p95_ms']:.3f} | {row['speedup_p50']:.2f}x | "
              f"{row['cpu_p50_ms']:.3f} | {row['cpu_speedup_p50']:.2f}x |")

    times = []
    transform_run = pl.concat(parts)
    for _ in range(repeats):
        t0 = time.perf_counter()
        ranker._extractor.transform(dataset, transform_run)
        times.append(time.perf_counter() - t0)
    median = sorted(times)[len(times) // 2]
    print(f"transform (batch of {transform_run.height} pairs): median {median * 1e3:.1f} ms = "
          f"{transform_run.height / median:,.0f} pairs/s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": rows, "agree": agree, "queries": len(parts), "k": args.k,
                                        "repeats": repeats, "trees": len(trees),
                                        "transform_pairs_per_s": transform_run.height / median}, indent=2))


if __name__ == "__main__":
    main()

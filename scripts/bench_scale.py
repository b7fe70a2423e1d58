"""How distill's steps that need no neural teacher grow with the number of cached pairs.

A seeded synthetic corpus (Zipfian pseudo-words, no model; each query is drawn from one document,
its one judged relevant) is written as a BEIR folder; then, each step as its own process so that
its peak RSS is its own (``os.wait4``'s rusage of that child): BM25 candidates (train and test),
a teacher cache of stand-in scores (BM25 + seeded Gaussian noise) written in two halves through
:class:`distill.cache.store.TeacherCache`, ``distill cache merge`` and ``cache info``, the cache read
that ``train-student`` does, feature extraction alone, ``train-student --student lightgbm`` and
``evaluate`` on the test split; and ``train-student --student lightgbm`` again with a fixed number of boosting
rounds (:data:`FIXED_ROUNDS`, no early stop), since early stopping trains more rounds on more data and the
whole step's time then measures the rounds that the data earns, not the cost per pair. An "empty run"
(the interpreter importing what train-student imports) is the baseline subtracted before dividing peak memory by pairs.

Pairs are train queries x ``--k``. A step whose result JSON exists is skipped, so an interrupted
run resumes step by step. CPU time (user + system) is reported rather than wall time: the cores
may be shared (OpenMP threads wait passively, so that time spent spinning is not counted).

    python scripts/bench_scale.py --out bench_out/scale --quick          # 10^5 pairs
    python scripts/bench_scale.py --out bench_out/scale --sizes 1e5 1e6  # these only [10^5, 10^6, 10^7]
    python scripts/bench_scale.py --out bench_out/scale --large          # and 10^8 (a machine with >= 64 GB)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from _common import cpu_description, measure_process, save_results

SIZES = (10**5, 10**6, 10**7)
LARGE = 10**8
STEPS = ("data", "candidates_train", "candidates_test", "cache_write", "cache_merge", "cache_info", "cache_read",
         "features", "train_lightgbm", "train_lightgbm_fixed", "evaluate")
# boosting rounds of train_lightgbm_fixed: the patience equals them, so every size trains exactly this many
FIXED_ROUNDS = 200
TEACHER = {"kind": "stand-in", "name": "bm25+gaussian-noise"}
_PY = sys.executable
_SCRIPT = str(Path(__file__).resolve())


# --- the synthetic corpus ---------------------------------------------------------------------

def corpus_shape(pairs: int, k: int) -> dict[str, int]:
    """Train queries (``pairs / k``), test queries and documents of the corpus for ``pairs`` pairs."""
    train = max(1, pairs // k)
    return {"train_queries": train, "test_queries": max(200, min(2000, train // 10)),
            "documents": max(20_000, pairs // 50), "vocabulary": 50_000}


def _vocabulary(rng, size: int) -> list[str]:
    """``size`` distinct lowercase pseudo-words of 4 to 9 letters."""
    import numpy as np

    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words: dict[str, None] = {}
    while len(words) < size:
        lengths = rng.integers(4, 10, size)
        chars = letters[rng.integers(0, 26, (size, 9))]
        for row, n in zip(chars, lengths, strict=True):
            words.setdefault("".join(row[:n]), None)
    return list(words)[:size]


def make_corpus(folder: Path, pairs: int, k: int, seed: int) -> dict[str, int]:
    """Write a BEIR folder (corpus, queries, qrels/train.tsv, qrels/test.tsv) for ``pairs`` pairs."""
    import numpy as np
    import polars as pl

    from distill.core.io import atomic_dir

    shape = corpus_shape(pairs, k)
    rng = np.random.default_rng(seed)
    vocab = np.array(_vocabulary(rng, shape["vocabulary"]))
    cdf = np.cumsum(1.0 / np.arange(1, len(vocab) + 1) ** 1.1)
    n_docs = shape["documents"]
    lengths = rng.integers(20, 80, n_docs)
    tokens = vocab[np.searchsorted(cdf, rng.random(int(lengths.sum())) * cdf[-1])]
    ends = np.cumsum(lengths)
    docs = [tokens[end - n: end] for end, n in zip(ends, lengths, strict=True)]
    n_queries = shape["train_queries"] + shape["test_queries"]
    source = rng.integers(0, n_docs, n_queries)
    picks = rng.random((n_queries, 4))
    queries = []
    for i, d in enumerate(source):
        words = docs[d][(picks[i] * len(docs[d])).astype(int)]
        queries.append(" ".join([*words, vocab[np.searchsorted(cdf, rng.random() * cdf[-1])]]))
    qids = [f"q{i}" for i in range(n_queries)]
    with atomic_dir(folder, kind="bench-scale-corpus", overwrite=True) as tmp:
        pl.DataFrame({"_id": [f"d{i}" for i in range(n_docs)], "title": [" ".join(d[:6]) for d in docs],
                      "text": [" ".join(d[6:]) for d in docs]}).write_ndjson(tmp / "corpus.jsonl")
        pl.DataFrame({"_id": qids, "text": queries}).write_ndjson(tmp / "queries.jsonl")
        (tmp / "qrels").mkdir()
        qrels = pl.DataFrame({"query-id": qids, "corpus-id": [f"d{d}" for d in source], "score": 1})
        train = shape["train_queries"]
        qrels.head(train).write_csv(tmp / "qrels" / "train.tsv", separator="\t")
        qrels.slice(train).write_csv(tmp / "qrels" / "test.tsv", separator="\t")
    return shape


# --- the steps that run as distill's own functions -----------------------------------------------

def write_cache(folder: Path, seed: int, chunk: int = 500_000) -> dict[str, int]:
    """Two caches (``cache_a``, ``cache_b``: the first and second half of the train queries) of stand-in
    teacher scores, BM25 + N(0, 1), written as score-teacher writes them: texts registered, then shards."""
    import numpy as np
    import polars as pl

    from distill.cache.store import TeacherCache
    from distill.cache.texts import text_hashes
    from distill.data.beir import load_beir
    from distill.data.runs import read_run

    dataset = load_beir(folder / "data", "train")
    run = read_run(folder / "runs" / "train.trec")
    noise = np.random.default_rng(seed).normal(size=run.height)
    run = run.with_columns(pl.col("score").cast(pl.Float64) + noise)
    qids = run["qid"].unique(maintain_order=True)
    halves = {"cache_a": qids[: len(qids) // 2], "cache_b": qids[len(qids) // 2:]}
    for name, part_qids in halves.items():
        part = run.filter(pl.col("qid").is_in(part_qids.implode()))
        cache = TeacherCache.create_or_open(folder / name, {**TEACHER, "seed": seed}, None)
        hashed = text_hashes(dataset, part)
        cache.register_candidates(hashed, "runs/train.trec")
        scored = hashed.join(part.select("qid", "docid", "score"), on=["qid", "docid"], maintain_order="left")
        for start in range(0, scored.height, chunk):
            cache.append(scored.slice(start, chunk))
    return {"pairs": run.height}


def read_cache(folder: Path) -> dict[str, int]:
    """What ``train-student`` reads: the merged cache's scores of the train queries from their texts."""
    from distill.cache.store import read_scores
    from distill.data.querysets import load_training_queries

    scores, _ = read_scores(folder / "cache", dataset=load_training_queries(folder / "data", "train", None))
    return {"pairs": scores.height}


def extract_features(folder: Path) -> dict[str, int]:
    """The LightGBM student's features of every train candidate (as train-student computes them: no
    first-stage columns, since its candidates are the cache's pairs)."""
    from distill.data.beir import load_beir
    from students.features import FeatureConfig, FeatureExtractor

    dataset = load_beir(folder / "data", "train")
    run = _train_pairs(folder)
    features = FeatureExtractor(FeatureConfig(first_stage=False)).fit(dataset).transform(dataset, run)
    return {"pairs": len(features), "bytes": int(features.nbytes)}


def _train_pairs(folder: Path):
    """The train candidates (qid, docid) of ``runs/train.trec``, read by polars' CSV reader: distill's
    ``read_run`` checks each line in Python and, at 10^6 pairs, peaks at 500 MB, more than the features take."""
    import polars as pl

    schema = {"qid": pl.String, "q0": pl.String, "docid": pl.String, "rank": pl.Int64, "score": pl.Float64,
              "tag": pl.String}
    return pl.read_csv(folder / "runs" / "train.trec", separator=" ", has_header=False, schema=schema).select(
        "qid", "docid")


def worker(step: str, folder: Path, pairs: int, k: int, seed: int) -> dict:
    """Run ``step`` in this process (the child the parent measures)."""
    if step == "data":
        return make_corpus(folder / "data", pairs, k, seed)
    if step == "cache_write":
        return write_cache(folder, seed)
    if step == "cache_read":
        return read_cache(folder)
    if step == "features":
        return extract_features(folder)
    if step == "empty":
        import lightgbm  # noqa: F401

        import distill.app.cli  # noqa: F401  (what train-student imports, measured alone)
        import students.lightgbm  # noqa: F401
        return {}
    raise ValueError(f"unknown step {step!r}")


# --- the parent: one process per step, measured --------------------------------------------------

def command(step: str, folder: Path, args: argparse.Namespace, pairs: int) -> list[str]:
    """The command line of ``step`` for the corpus in ``folder``."""
    distill = [_PY, "-m", "distill.app.cli"]
    data = str(folder / "data")
    if step == "candidates_train":
        return [*distill, "candidates", "--data", data, "--split", "train", "--k", str(args.k),
                "--out", str(folder / "runs" / "train.trec")]
    if step == "candidates_test":
        return [*distill, "candidates", "--data", data, "--split", "test", "--k", str(args.k),
                "--out", str(folder / "runs" / "test.trec")]
    if step == "cache_merge":
        return [*distill, "cache", "merge", str(folder / "cache_a"), str(folder / "cache_b"),
                "--out", str(folder / "cache")]
    if step == "cache_info":
        return [*distill, "cache", "info", str(folder / "cache")]
    if step == "train_lightgbm":
        return [*distill, "train-student", "--student", "lightgbm", "--cache", str(folder / "cache"), "--data", data,
                "--split", "train", "--seed", str(args.seed), "--out", str(folder / "models" / "lightgbm")]
    if step == "train_lightgbm_fixed":
        rounds = ["--n-estimators", str(FIXED_ROUNDS), "--early-stopping-rounds", str(FIXED_ROUNDS)]
        return [*distill, "train-student", "--student", "lightgbm", "--cache", str(folder / "cache"), "--data", data,
                "--split", "train", "--seed", str(args.seed), *rounds,
                "--out", str(folder / "models" / "lightgbm_fixed")]
    if step == "evaluate":
        return [*distill, "evaluate", "--data", data, "--split", "test", "--run", str(folder / "runs" / "test.trec"),
                "--k", str(args.k), "--ranker", "bm25=bm25", "--ranker", f"lightgbm={folder / 'models' / 'lightgbm'}",
                "--baseline", "bm25", "--out", str(folder / "eval")]
    return [_PY, _SCRIPT, "--worker", step, "--folder", str(folder), "--pairs", str(pairs), "--k", str(args.k),
            "--seed", str(args.seed)]


def measure(argv: list[str], result: Path) -> dict:
    """:func:`_common.measure_process` of ``argv`` with the steps' environment, the record holding what a
    ``--worker`` child printed last."""
    return measure_process(argv, result, env=_child_env(), parse=_worker_result)


def _child_env() -> dict[str, str]:
    """The steps' environment: OpenMP threads that sleep rather than spin while they wait (unless
    ``OMP_WAIT_POLICY`` is set), so that CPU time counts work, not spinning on cores other jobs hold."""
    return {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "passive")}


def _worker_result(output: str) -> dict:
    """The JSON line a ``--worker`` child prints last (``{}`` for distill's own commands)."""
    lines = [line for line in output.splitlines() if line.startswith('{"result":')]
    return json.loads(lines[-1])["result"] if lines else {}


def run_size(out: Path, pairs: int, args: argparse.Namespace) -> dict[str, dict]:
    """Every step at ``pairs`` pairs under ``out/n<pairs>``, skipping those whose result exists."""
    folder = out / f"n{pairs}"
    (folder / "steps").mkdir(parents=True, exist_ok=True)
    records = {}
    for step in STEPS:
        result = folder / "steps" / f"{step}.json"
        if result.exists():
            records[step] = json.loads(result.read_text())
            continue
        print(f"[{time.strftime('%H:%M:%S')}] {pairs} pairs: {step}", flush=True)
        records[step] = measure(command(step, folder, args, pairs), result)
    return records


def table(empty: dict, sizes: dict[int, dict[str, dict]]) -> str:
    """The markdown table: CPU seconds and peak RSS per step and size, and train-student's memory per pair."""
    lines = ["| pairs | step | CPU s | peak RSS MB | (peak - empty) / pair |", "|---|---|---|---|---|",
             f"| - | empty run | {empty['cpu_s']} | {empty['peak_rss_mb']} | |"]
    for pairs, records in sizes.items():
        for step, record in records.items():
            per_pair = (record["peak_rss_mb"] - empty["peak_rss_mb"]) * 2**20 / pairs
            lines.append(f"| {pairs:,} | {step} | {record['cpu_s']} | {record['peak_rss_mb']} | {per_pair:.0f} B |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_out/scale"))
    parser.add_argument("--sizes", type=float, nargs="+", default=None, help="Pairs [1e5 1e6 1e7].")
    parser.add_argument("--quick", action="store_true", help="10^5 pairs only.")
    parser.add_argument("--large", action="store_true", help="Add 10^8 pairs (a machine with >= 64 GB).")
    parser.add_argument("--k", type=int, default=100, help="Candidates per query.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--pairs", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps({"result": worker(args.worker, args.folder, args.pairs, args.k, args.seed)}), flush=True)
        return
    sizes = [SIZES[0]] if args.quick else [int(s) for s in args.sizes] if args.sizes else list(SIZES)
    sizes += [LARGE] if args.large else []
    args.out.mkdir(parents=True, exist_ok=True)
    empty_file = args.out / "empty.json"
    empty = json.loads(empty_file.read_text()) if empty_file.exists() else \
        measure(command("empty", args.out, args, 0), empty_file)
    results = {pairs: run_size(args.out, pairs, args) for pairs in sizes}
    name = "bench_scale" + ("_quick" if args.quick else "")
    (args.out / f"{name}.md").write_text(table(empty, results))
    save_results(args.out, name, {"cpu": cpu_description(), "omp_wait_policy": _child_env()["OMP_WAIT_POLICY"],
                                  "empty": empty,
                                  "sizes": {str(p): r for p, r in results.items()}})


if __name__ == "__main__":
    main()

"""Padded tokens per batch on this machine: which CPU budget scores (query, document) pairs fastest.

distill batches pairs by a budget of padded tokens (:mod:`distill.inference.batching`), one default
per device type, and a smaller one for the graph runtimes (:mod:`distill.inference.graph`). This
times each budget for every compute the machine has (torch fp32, bf16 where the CPU has
it, ONNX Runtime and OpenVINO with the ``onnx`` extra) on the same pairs: SciFact test
queries' BM25 top-k, one query's candidates per call (a reranking request), p50 over the
queries after one warm-up query. Ratios are within one run, on the same threads.

    python scripts/bench_batch_tokens.py --data ../shared/data/scifact [--model FOLDER] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from _common import DEFAULT_DATA, cpu_description, save_results
from bench_teacher import build_model

BUDGETS = (16384, 4096, 2048, 1024)


def p50_ms(score, groups) -> float:
    score(*groups[0])  # warm-up
    times = []
    for queries, docs in groups[1:]:
        start = time.perf_counter()
        score(queries, docs)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model", type=Path, default=None,
                        help="A cross-encoder folder [the packaged MiniLM-L6 with a seeded head].")
    parser.add_argument("--queries", type=int, default=6, help="Test queries timed (the first is a warm-up).")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="3 queries x top-20, 2 budgets.")
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    args = parser.parse_args()
    budgets = (16384, 2048) if args.quick else BUDGETS
    if args.quick:
        args.queries, args.k = 3, 20

    import torch

    from distill.core.hardware import native_precisions
    from distill.data.beir import load_beir
    from distill.data.bm25 import bm25_run
    from distill.inference.graph import available_backends
    from teachers import CrossEncoderTeacher
    from teachers.precision import GRAPH_DTYPES, compute_name

    torch.set_num_threads(args.threads)
    dataset = load_beir(args.data, "test")
    dataset.queries = dataset.queries.head(args.queries)
    run = bm25_run(dataset, args.k)
    groups = [(dataset.query_texts(g["qid"]), dataset.doc_texts(g["docid"]))
              for _, g in run.group_by("qid", maintain_order=True)]
    native = native_precisions("cpu")
    computes = ["fp32", *native] + [compute_name(b, d) for b in available_backends() for d in GRAPH_DTYPES[b]
                                    if d == "fp32" or d in native]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or build_model(Path(tmp) / "model", args.max_length)
        for compute in computes:
            teacher = CrossEncoderTeacher(model, max_length=args.max_length, dtype="fp32", backend="torch",
                                          allow_untrained_head=args.model is None)
            teacher.use_precision(compute)
            row = {"compute": compute}
            for budget in budgets:
                teacher.max_tokens_per_batch = teacher.graph_max_tokens_per_batch = budget
                row[str(budget)] = round(p50_ms(teacher.score, groups), 1)
            best = min(budgets, key=lambda b: row[str(b)])
            row["best"] = best
            rows.append(row)
            print(row, flush=True)
    save_results(args.out, "bench_batch_tokens" + ("_quick" if args.quick else ""),
                 {"cpu": cpu_description(), "threads": args.threads,
                  "model": str(args.model or "MiniLM-L6, seeded head"),
                  "max_length": args.max_length, "k": args.k, "queries_timed": len(groups) - 1,
                  "p50_ms_per_query": rows})


if __name__ == "__main__":
    main()

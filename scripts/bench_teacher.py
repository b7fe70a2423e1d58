"""Teacher scoring throughput: `distill score-teacher`'s scoring path vs plain CrossEncoder.predict.

Both score the same SciFact test pairs (BM25 top-k) with the same model at max_length 512
in the same process; model loading is excluded from both timings. A second pass over the
same cache must make no model calls.

    python scripts/bench_teacher.py --data ../shared/data/scifact [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import DEFAULT_DATA, minilm_path, save_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--teacher", default=None, help="Cross-encoder or backbone folder [packaged all-MiniLM-L6-v2].")
    parser.add_argument("--queries", type=int, default=30, help="Test queries to score (0 = all).")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--dtype", default="auto", help="auto | fp32 | bf16 | fp16 (reduced ones are checked first).")
    parser.add_argument("--quick", action="store_true", help="8 queries x top-20 (about a minute).")
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    args = parser.parse_args()
    if args.quick:
        args.queries, args.k = 8, 20

    import torch
    from sentence_transformers import CrossEncoder

    from distill.bm25 import bm25_run
    from distill.cache import TeacherCache
    from distill.data import load_beir
    from distill.manifest import frame_hash
    from distill.ranking import settle_precision
    from distill.scoring import score_into_cache
    from teachers import CrossEncoderTeacher

    dataset = load_beir(args.data, "test")
    if args.queries:
        dataset.queries = dataset.queries.head(args.queries)
    run = bm25_run(dataset, args.k)
    model_path = args.teacher or minilm_path()

    # a backbone such as the packaged MiniLM has no reranking head: throughput does not depend on
    # its weights, so allow a fresh one, seeded identically for both sides
    torch.manual_seed(0)
    teacher = CrossEncoderTeacher(model_path, max_length=args.max_length, allow_untrained_head=True,
                                  dtype=args.dtype)
    calls = {"n": 0}
    score = teacher.score

    def counting_score(queries, docs, progress=None):
        calls["n"] += 1
        return score(queries, docs, progress=progress)

    teacher.score = counting_score
    pairs = run.select("qid", "docid")
    queries, docs = dataset.query_texts(pairs["qid"]), dataset.doc_texts(pairs["docid"])
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()  # as in score-teacher, checking a reduced precision is part of the time
        settle_precision(teacher, dataset, pairs)
        cache = TeacherCache.create_or_open(Path(tmp) / "cache", teacher.fingerprint(), frame_hash(dataset.corpus))
        stats = score_into_cache(teacher, dataset, run, cache, show_progress=False)
        distill_s = time.perf_counter() - t0
        cached_scores = cache.scores()
        calls_first = calls["n"]
        t1 = time.perf_counter()
        again = score_into_cache(teacher, dataset, run, cache, show_progress=False)
        rerun_s = time.perf_counter() - t1
        second_pass_calls = calls["n"] - calls_first

    torch.manual_seed(0)
    ce = CrossEncoder(model_path, max_length=args.max_length, num_labels=1)
    t2 = time.perf_counter()
    plain = ce.predict(list(zip(queries, docs)), batch_size=32, activation_fn=torch.nn.Identity(),
                       show_progress_bar=False)
    plain_s = time.perf_counter() - t2

    ours = pairs.join(cached_scores, on=["qid", "docid"], how="left")["score"].to_numpy()
    from scipy.stats import spearmanr

    n = pairs.height
    results = {
        "pairs": n, "queries": dataset.queries.height, "k": args.k, "max_length": args.max_length,
        "teacher": teacher.fingerprint(), "dtype": teacher.dtype, "torch_threads": torch.get_num_threads(),
        "distill_pairs_per_s": round(n / distill_s, 2), "predict_pairs_per_s": round(n / plain_s, 2),
        "ratio": round(plain_s / distill_s, 3),
        "spearman_vs_predict": round(float(spearmanr(ours, plain).statistic), 6),
        "max_abs_diff_vs_predict": float(abs(ours - plain).max()),
        "second_pass_model_calls": second_pass_calls, "second_pass_scored": again.scored,
        "second_pass_seconds": round(rerun_s, 3), "first_pass_scored": stats.scored,
    }
    save_results(args.out, "bench_teacher" + ("_quick" if args.quick else ""), results)
    if second_pass_calls:
        raise SystemExit("second pass over the cache called the model")


if __name__ == "__main__":
    main()

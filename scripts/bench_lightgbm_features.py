"""LightGBM students with and without a dense ranker's score as a feature, on a finished pipeline.

Reuses the teacher cache, candidates and students of ``scripts/bench_students.py`` (``--out``):
for each dense ranker it trains ``distill train-student --student lightgbm --feature-ranker
NAME=SPEC`` on the same cache, then evaluates BM25, the pipeline's lexical LightGBM and each new
model (with the dense ranker alone beside it) on the valid and test splits. Everything runs in
one process, so each model embeds the corpus once.

    python scripts/bench_lightgbm_features.py --out bench_out/scifact [--quick]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import minilm_path, save_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_out/scifact"), help="A bench_students.py folder.")
    parser.add_argument("--dense", action="append", default=None,
                        help="NAME=SPEC of a dense ranker to add as a feature; repeatable "
                             "[the pipeline's bi_encoder student and the packaged MiniLM].")
    parser.add_argument("--quick", action="store_true", help="The bi-encoder student only, test split only.")
    args = parser.parse_args()
    out = args.out
    dense = args.dense or [f"bi_encoder={out / 'models' / 'bi_encoder'}", f"minilm={minilm_path()}"]
    if args.quick:
        dense = dense[:1]
    import polars as pl

    from distill.pipeline import TITLE_SPLIT, invoke

    # the split the pipeline's students learned from
    split_train = TITLE_SPLIT if json.loads((out / "pipeline.json").read_text())["config"].get("title_queries") \
        else "train"
    rankers = ["--ranker", "bm25=bm25", "--ranker", f"lightgbm={out / 'models' / 'lightgbm'}"]
    for item in dense:
        name = item.split("=", 1)[0]
        model = out / "lightgbm_features" / f"lightgbm_{name}"
        if not model.exists():
            invoke(["train-student", "--student", "lightgbm", "--cache", str(out / "cache"),
                    "--data", str(out / "data"), "--split", split_train, "--seed", "42",
                    "--feature-ranker", item, "--out", str(model)])
        rankers += ["--ranker", f"lightgbm_{name}={model}", "--ranker", item]
    tables = {}
    for split in ("test",) if args.quick else ("valid", "test"):
        eval_dir = out / "lightgbm_features" / f"eval_{split}"
        invoke(["evaluate", "--data", str(out / "data"), "--split", split, "--run", str(out / "runs" / f"{split}.trec"),
                "--k", "100", *rankers, "--baseline", "bm25", "--out", str(eval_dir)])
        summary = pl.read_parquet(eval_dir / "summary.parquet").select("ranker", "nDCG@10", "RR@10")
        significance = pl.read_parquet(eval_dir / "significance.parquet").filter(pl.col("metric") == "nDCG@10")
        tables[split] = summary.join(significance.select("ranker", "p_ttest", "p_ttest_adj"), on="ranker",
                                     how="left").to_dicts()
    save_results(out, "bench_lightgbm_features" + ("_quick" if args.quick else ""), {"dense": dense, **tables})


if __name__ == "__main__":
    main()

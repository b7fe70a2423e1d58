"""LightGBM student variants on a finished pipeline: dense rankers' scores as features, and qrels
blended into the teacher's grades.

Reuses the teacher cache, candidates and students of ``scripts/bench_students.py`` (``--out``).
Every variant is ``distill train-student --student lightgbm`` on the same cache, with or without
``--feature-ranker NAME=SPEC`` and with each ``--qrels-weight`` (0: the teacher's grades alone;
1: the qrels alone, plain learning to rank, which says what the teacher adds). All of them, BM25
and each dense ranker alone are then evaluated on the valid and test splits; choose a variant by
valid, report test. Everything runs in one process, so each dense model embeds the corpus once.

    python scripts/bench_lightgbm.py --out bench_out/scifact [--quick]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import minilm_path, run_distill, save_results


def variant_name(dense: str | None, weight: float) -> str:
    return "lightgbm" + (f"_{dense}" if dense else "") + ("" if weight == 0 else f"_q{round(weight * 100)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_out/scifact"), help="A bench_students.py folder.")
    parser.add_argument("--dense", action="append", default=None,
                        help="NAME=SPEC of a dense ranker to add as a feature; repeatable "
                             "[the pipeline's bi_encoder student and the packaged MiniLM].")
    parser.add_argument("--qrels-weight", type=float, action="append", default=None,
                        help="--qrels-weight of each variant; repeatable [0, 0.5, 1].")
    parser.add_argument("--quick", action="store_true", help="The bi-encoder student only, test split only.")
    args = parser.parse_args()
    out = args.out
    dense = args.dense or [f"bi_encoder={out / 'models' / 'bi_encoder'}", f"minilm={minilm_path()}"]
    weights = args.qrels_weight or [0.0, 0.5, 1.0]
    if args.quick:
        dense = dense[:1]
    import polars as pl

    from distill.app.pipeline import TITLE_SPLIT

    # the split the pipeline's students learned from
    split_train = TITLE_SPLIT if json.loads((out / "pipeline.json").read_text())["config"].get("title_queries") \
        else "train"
    rankers = ["--ranker", "bm25=bm25"]
    for item in [None, *dense]:
        name = item.split("=", 1)[0] if item else None
        for weight in weights:
            variant = variant_name(name, weight)
            model = out / "models" / "lightgbm" if variant == "lightgbm" else out / "lightgbm_variants" / variant
            if not model.exists():
                run_distill(["train-student", "--student", "lightgbm", "--cache", str(out / "cache"),
                        "--data", str(out / "data"), "--split", split_train, "--seed", "42",
                        "--qrels-weight", str(weight), *(["--feature-ranker", item] if item else []),
                        "--out", str(model)])
            rankers += ["--ranker", f"{variant}={model}"]
        if item:
            rankers += ["--ranker", item]
    tables = {}
    for split in ("test",) if args.quick else ("valid", "test"):
        eval_dir = out / "lightgbm_variants" / f"eval_{split}"
        run_distill(["evaluate", "--data", out / "data", "--split", split, "--run", out / "runs" / f"{split}.trec",
                     "--k", "100", *rankers, "--baseline", "bm25", "--out", eval_dir])
        summary = pl.read_parquet(eval_dir / "summary.parquet").select("ranker", "nDCG@10", "RR@10")
        significance = pl.read_parquet(eval_dir / "significance.parquet").filter(pl.col("metric") == "nDCG@10")
        tables[split] = summary.join(significance.select("ranker", "p_ttest", "p_ttest_adj"), on="ranker",
                                     how="left").to_dicts()
    save_results(out, "bench_lightgbm" + ("_quick" if args.quick else ""),
                 {"dense": dense, "qrels_weights": weights, **tables})


if __name__ == "__main__":
    main()

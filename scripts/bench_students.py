"""Students distilled from a fine-tuned teacher on SciFact, against BM25 and the teacher.

Runs the pipeline of ``distill demo --data`` (train-teacher on the train split minus a
held-out valid split, score-teacher on train and test candidates, the three students,
evaluation on the test split's BM25 top-k) and prints nDCG@10 / MRR@10 per ranker.
Finished steps are skipped, so a rerun only reprints the table.

    python scripts/bench_students.py --data ../shared/data/scifact [--quick]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import DEFAULT_DATA, save_results


def pipeline_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=None, help="Work folder (default bench_out/<data name>).")
    parser.add_argument("--init", default=None, help="Backbone of teacher and bi-encoder [packaged all-MiniLM-L6-v2].")
    parser.add_argument("--teacher", default=None, help="An existing teacher folder: skips train-teacher.")
    parser.add_argument("--teacher-epochs", type=float, default=1.0)
    parser.add_argument("--teacher-objective", default="listnet", choices=("listnet", "listwise", "pointwise"),
                        help="train-teacher --objective.")
    parser.add_argument("--student-epochs", type=float, default=1.0)
    parser.add_argument("--ce-epochs", type=float, default=None, help="Cross-encoder student's [--student-epochs].")
    parser.add_argument("--ce-lr", type=float, default=None, help="Cross-encoder student's [the pipeline's 5e-5].")
    parser.add_argument("--train-k", type=int, default=30, help="BM25 candidates per training query.")
    parser.add_argument("--test-k", type=int, default=100, help="BM25 candidates reranked per valid/test query.")
    parser.add_argument("--title-queries", type=int, default=0,
                        help="Students also learn from N documents' titles as queries, scored by the teacher.")
    parser.add_argument("--lightgbm-feature", action="append", default=[], choices=("bi_encoder", "ce_student"),
                        help="A neural student whose score is also a LightGBM feature; repeatable.")
    parser.add_argument("--lightgbm-qrels-weight", type=float, default=0.0,
                        help="Share of the LightGBM student's grades taken from the train qrels [0: teacher only].")
    parser.add_argument("--quick", action="store_true", help="Smoke settings: 128 tokens, top-20, tiny epochs.")
    return parser.parse_args()


def run(args: argparse.Namespace):
    from distill.pipeline import PipelineConfig, run_pipeline

    out = args.out or Path("bench_out") / (args.data.name + ("_quick" if args.quick else ""))
    cfg = PipelineConfig(out=out, data=args.data, init=args.init, teacher=args.teacher,
                         title_queries=args.title_queries, lightgbm_features=tuple(args.lightgbm_feature),
                         lightgbm_qrels_weight=args.lightgbm_qrels_weight,
                         teacher_epochs=args.teacher_epochs, teacher_objective=args.teacher_objective,
                         student_epochs=args.student_epochs, ce_epochs=args.ce_epochs, ce_lr=args.ce_lr,
                         train_k=args.train_k, test_k=args.test_k)
    if args.quick:
        cfg.max_length, cfg.train_k, cfg.test_k, cfg.latency_queries = 128, 10, 20, 5
        cfg.teacher_epochs, cfg.student_epochs, cfg.teacher_negatives, cfg.negatives = 0.1, 0.1, 3, 3
        cfg.ce_epochs = None
    record = run_pipeline(cfg)
    evaluation = json.loads((out / "eval" / "evaluation.json").read_text())
    return cfg, record, evaluation


def main() -> None:
    args = pipeline_args(__doc__.splitlines()[0])
    cfg, record, _ = run(args)
    import polars as pl

    summary = pl.read_parquet(cfg.out / "eval" / "summary.parquet")
    table = summary.select("ranker", "nDCG@10", "RR@10", "R@100").to_dicts()
    teacher = next(r["nDCG@10"] for r in table if r["ranker"] == "teacher")
    for row in table:
        row["share_of_teacher_nDCG@10"] = round(row["nDCG@10"] / teacher, 4) if teacher else None
    save_results(cfg.out, "bench_students", {"config": cfg.to_dict(), "table": table,
                                             "steps": record["steps"]})


if __name__ == "__main__":
    main()

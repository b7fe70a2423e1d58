"""Students distilled from a fine-tuned teacher on SciFact, against BM25 and the teacher.

Runs the pipeline of ``distill demo --data`` with its defaults (pseudo-queries, train-teacher
stopping early on a held-out valid split, score-teacher on train, valid and test candidates,
the teacher fused with BM25 where that validates better, the cross-encoder student in rounds,
the bi-encoder, LightGBM at qrels weights chosen on valid, cascade, evaluation on the test
split's BM25 top-k) and prints nDCG@10 / MRR@10 per ranker, one teacher for the whole table.
Every step resumes where it stopped (score-teacher from its cache, training from its last
checkpoint, rounds from the last finished round), so the run can be carried across sessions;
``pipeline.json`` and the results file give each step's wall and CPU seconds.

    python scripts/bench_students.py --data ../shared/data/scifact [--quick] [--write-doc docs/results/scifact.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import DEFAULT_DATA, cpu_description, quiet_logging, save_results


def pipeline_args(description: str) -> argparse.Namespace:
    """Options; those left unset keep PipelineConfig's defaults (the recipe `distill demo --data` runs)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=None, help="Work folder (default bench_out/<data name>).")
    parser.add_argument("--init", default=None, help="Backbone of teacher and bi-encoder [packaged all-MiniLM-L6-v2].")
    parser.add_argument("--teacher", default=None, help="An existing teacher folder: skips train-teacher.")
    parser.add_argument("--teacher-epochs", type=float, default=None, help="Cap; it stops early on valid.")
    parser.add_argument("--teacher-objective", default=None, choices=("listnet", "listwise", "pointwise"),
                        help="train-teacher --objective.")
    parser.add_argument("--student-epochs", type=float, default=None)
    parser.add_argument("--ce-epochs", type=float, default=None, help="Cross-encoder student's, per round.")
    parser.add_argument("--ce-lr", type=float, default=None, help="Cross-encoder student's peak lr (round 1).")
    parser.add_argument("--ce-rounds", type=int, default=None, help="Cross-encoder student's rounds.")
    parser.add_argument("--train-k", type=int, default=None, help="BM25 candidates per training query.")
    parser.add_argument("--test-k", type=int, default=None, help="BM25 candidates reranked per valid/test query.")
    parser.add_argument("--queries", type=Path, default=None, help="Students' unjudged queries (a query log).")
    parser.add_argument("--pseudo-queries", default=None, help="Pseudo-query kinds, or 'none'.")
    parser.add_argument("--title-queries", type=int, default=None,
                        help="Students also learn from N documents' titles as judged queries.")
    parser.add_argument("--lightgbm-feature", action="append", default=None, choices=("bi_encoder", "ce_student"),
                        help="A neural student whose score is also a LightGBM feature; repeatable.")
    parser.add_argument("--lightgbm-qrels-weight", type=float, action="append", default=None,
                        help="Share of the LightGBM student's grades taken from the train qrels; repeatable (the "
                             "best on valid is kept).")
    parser.add_argument("--write-doc", type=Path, default=None,
                        help="Also render the run as a markdown page (e.g. docs/results/scifact.md).")
    parser.add_argument("--report-only", action="store_true",
                        help="Run nothing: render --write-doc from the work folder of a finished run.")
    parser.add_argument("--quick", action="store_true",
                        help="Smoke settings: 128 tokens, top-20, 300 title pseudo-queries, tiny epochs.")
    return parser.parse_args()


def work_folder(args: argparse.Namespace) -> Path:
    return args.out or Path("bench_out") / (args.data.name + ("_quick" if args.quick else ""))


def run(args: argparse.Namespace):
    from distill.app.pipeline import PipelineConfig, run_pipeline

    quiet_logging()
    out = work_folder(args)
    given = {"init": args.init, "teacher": args.teacher, "title_queries": args.title_queries,
             "teacher_epochs": args.teacher_epochs, "teacher_objective": args.teacher_objective,
             "student_epochs": args.student_epochs, "ce_epochs": args.ce_epochs, "ce_lr": args.ce_lr,
             "ce_rounds": args.ce_rounds, "train_k": args.train_k, "test_k": args.test_k, "queries": args.queries,
             "lightgbm_features": tuple(args.lightgbm_feature) if args.lightgbm_feature else None,
             "lightgbm_qrels_weights": tuple(args.lightgbm_qrels_weight) if args.lightgbm_qrels_weight else None,
             "pseudo_queries": args.pseudo_queries}
    if given["pseudo_queries"] == "none":
        given["pseudo_queries"] = ""
    cfg = PipelineConfig(out=out, data=args.data, **{k: v for k, v in given.items() if v is not None})
    if args.quick:
        cfg.max_length, cfg.train_k, cfg.test_k, cfg.latency_queries = 128, 10, 20, 5
        cfg.teacher_epochs, cfg.student_epochs, cfg.teacher_negatives, cfg.negatives = 0.1, 0.1, 3, 3
        cfg.ce_epochs, cfg.ce_rounds, cfg.lightgbm_qrels_weights = None, 2, (0.0, 0.5)
        cfg.pseudo_queries, cfg.max_pseudo_queries = "title", 300  # not all 5,183 titles: minutes, not an hour
        cfg.allow_collapse = True  # a smoke run: a collapse is reported, not fatal
    record = run_pipeline(cfg)
    evaluation = json.loads((out / "eval" / "evaluation.json").read_text())
    return cfg, record, evaluation


def write_doc(out: Path, path: Path) -> None:
    """The run's page; ``out/NOTES.md``, if any, says what the command alone does not (e.g. sessions)."""
    from _students_report import render

    from distill.core.io import write_text_atomic

    cpu = cpu_description()
    machine = f"{cpu.get('model')}, {cpu.get('cores')} cores, {', '.join(cpu.get('flags', [])) or 'no AVX'}"
    notes = (out / "NOTES.md").read_text(encoding="utf-8") if (out / "NOTES.md").exists() else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, render(out, machine, notes))
    print(f"wrote {path}")


def main() -> None:
    args = pipeline_args(__doc__.splitlines()[0])
    if args.report_only:
        if args.write_doc is None:
            raise SystemExit("--report-only renders --write-doc: give its path")
        out = work_folder(args)
        if not (out / "eval" / "evaluation.json").exists():
            raise SystemExit(f"{out} holds no finished run (no eval/evaluation.json): run without --report-only")
        write_doc(out, args.write_doc)
        return
    cfg, record, _ = run(args)
    import polars as pl

    summary = pl.read_parquet(cfg.out / "eval" / "summary.parquet")
    table = summary.select("ranker", "nDCG@10", "RR@10", "R@100").to_dicts()
    teacher = next(r["nDCG@10"] for r in table if r["ranker"] == "teacher")
    for row in table:
        row["share_of_teacher_nDCG@10"] = round(row["nDCG@10"] / teacher, 4) if teacher else None
    # each step's wall and CPU seconds (a rerun resumes: finished steps keep the figures of the run that did them)
    save_results(cfg.out, "bench_students", {"config": cfg.to_dict(), "table": table,
                                             "teacher_choice": record.get("teacher_choice"),
                                             "students_validation": record.get("students"),
                                             "steps": record["steps"]})
    if args.write_doc:
        write_doc(cfg.out, args.write_doc)


if __name__ == "__main__":
    main()

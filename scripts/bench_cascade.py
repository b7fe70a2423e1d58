"""Cascade within 10% of the teacher's per-query latency, next to BM25, teacher and students.

Runs (or reuses) the pipeline of ``scripts/bench_students.py``: the cascade is searched on
the held-out valid split with a budget of 10% of the teacher's measured p50 latency per
query (k candidates, 1 thread), then everything is evaluated and timed on the test split.

    python scripts/bench_cascade.py --data ../shared/data/scifact [--quick]
"""

from __future__ import annotations

import json

from _common import save_results
from bench_students import pipeline_args, run


def main() -> None:
    args = pipeline_args(__doc__.splitlines()[0])
    cfg, record, _ = run(args)
    import polars as pl

    summary = pl.read_parquet(cfg.out / "eval" / "summary.parquet")
    latency = json.loads((cfg.out / "eval" / "latency.json").read_text())
    spec = json.loads((cfg.out / "cascade.json").read_text())
    rows = []
    for row in summary.select("ranker", "nDCG@10", "RR@10").to_dicts():
        timing = latency.get(row["ranker"], {})
        rows.append({**row, "p50_ms": timing.get("p50_ms"), "p95_ms": timing.get("p95_ms")})
    save_results(cfg.out, "bench_cascade", {
        "budget": record.get("budget"), "cascade": spec["cascade"], "budget_ms": spec["budget_ms"], "table": rows,
        "no_precompute": {k: v for k, v in latency.items() if "no precompute" in k},
    })


if __name__ == "__main__":
    main()

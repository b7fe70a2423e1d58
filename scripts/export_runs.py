"""Write rankers' scores from a finished ``distill evaluate`` as TREC run files.

``distill evaluate`` takes a run file as a ranker (``--ranker NAME=run.trec``), so a recipe can
compare a ranker scored in an earlier evaluation without scoring the candidates again.

    python scripts/export_runs.py EVAL_DIR OUT_DIR RANKER [RANKER ...]   # writes OUT_DIR/RANKER.trec
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eval", type=Path, help="Folder of a finished `distill evaluate` (its runs.parquet).")
    parser.add_argument("out", type=Path, help="Folder for the run files.")
    parser.add_argument("rankers", nargs="+", help="Ranker names, as in the evaluation.")
    args = parser.parse_args()

    import polars as pl

    from distill.runs import write_run

    runs = pl.read_parquet(args.eval / "runs.parquet")
    known = set(runs["ranker"].unique())
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.rankers:
        if name not in known:
            parser.error(f"{args.eval / 'runs.parquet'}: no ranker {name!r} (it has {sorted(known)})")
        write_run(runs.filter(pl.col("ranker") == name).drop("ranker"), args.out / f"{name}.trec", tag=name)


if __name__ == "__main__":
    main()

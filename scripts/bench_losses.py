"""Which distillation loss wins on real data: every applicable loss, one teacher cache, one budget.

From ONE SciFact teacher cache (the train queries of the pipeline's split view plus title
queries, `distill split-view --title-queries`), trains the bi-encoder student with every loss
that applies to it and the 2-layer cross-encoder student with the main families, all under one
fixed budget (same groups, steps, seed and data), and reports nDCG@10 on the held-out valid
queries and on the test queries, with paired t-tests against MarginMSE (Holm-adjusted over the
losses of a student and split, distill's own ``paired_tests``/``adjust_p_values``). Defaults are
chosen on valid only; test is reported, never used to choose.

Resumable loss by loss: each finished (student, loss) writes ``<out>/results/<student>_<loss>.json``
and is skipped on a rerun; the view, candidates, teacher and cache are reused when present.
The budget is recorded in ``<out>/budget.json``; a rerun with another budget is refused.
The plan, training and evaluation are in ``scripts/_losses_run.py``, the report in
``scripts/_losses_report.py``; this script holds the command line and the work folder's bookkeeping.

    python scripts/bench_losses.py --quick                      # a few minutes: plumbing only
    nice -n 10 python scripts/bench_losses.py --out bench_out/losses --write-doc docs/results/losses.md
    python scripts/bench_losses.py --out bench_out/losses --report-only --write-doc docs/results/losses.md
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import TextIO

from _common import DEFAULT_DATA
from _losses_report import write_report
from _losses_run import (
    QUICK_LOSSES,
    Budget,
    Entry,
    default_plan,
    invoke,
    prepare,
    quick_budget,
    reference,
    run_entry,
)


def parse_args() -> argparse.Namespace:
    """The command line, ``--out`` defaulting to ``bench_out/losses`` (``losses_quick`` with ``--quick``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=None, help="Work folder [bench_out/losses(_quick)].")
    parser.add_argument("--quick", action="store_true", help="Tiny budget: checks the plumbing in minutes.")
    parser.add_argument("--teacher", default=None, help="An existing teacher folder: skips train-teacher.")
    parser.add_argument("--students", default="bi,ce", help="Comma-separated: bi, ce.")
    parser.add_argument("--losses", default=None,
                        help="Comma-separated subset of the plan: losses, run labels or tables (ce_schedule).")
    parser.add_argument("--title-queries", type=int, default=None)
    parser.add_argument("--epochs", type=float, default=None)
    parser.add_argument("--keep-models", action="store_true", help="Keep each student's folder after evaluation.")
    parser.add_argument("--report-only", action="store_true", help="Only rewrite the report from the results.")
    parser.add_argument("--write-doc", type=Path, default=None, help="Also write the report there (markdown).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cross-check", type=Path, default=None,
                        help="Another work folder of the same budget: report its runs beside this folder's.")
    parser.add_argument("--no-teacher-reference", action="store_true",
                        help="Leave scoring the teacher's valid/test reference to another process on this folder.")
    args = parser.parse_args()
    args.out = args.out or Path("bench_out") / ("losses_quick" if args.quick else "losses")
    return args


def budget_and_plan(args: argparse.Namespace) -> tuple[Budget, list[Entry]]:
    """The budget the options set, and the entries of the plan they select (``--losses``, or --quick's few)."""
    budget = quick_budget() if args.quick else Budget()
    budget.students = tuple(s for s in args.students.split(",") if s)
    budget.teacher = args.teacher
    for name in ("title_queries", "epochs"):
        if getattr(args, name) is not None:
            setattr(budget, name, getattr(args, name))
    plan = default_plan(budget.students, budget)
    wanted = set(args.losses.split(",")) if args.losses else QUICK_LOSSES if args.quick else None
    if wanted:
        # a loss name picks that loss's own rows, not the variants (schedules) that train with it
        plan = [e for e in plan if wanted & {e.label, e.table} or (not e.tag and e.loss in wanted)]
    return budget, plan


def teacher_reference(args: argparse.Namespace, budget: Budget, ctx: dict) -> None:
    """The teacher's own valid/test figures as a reference row, scored by one process only (a lock).

    Run last: scoring the valid and test candidates costs about one student's time."""
    if (not args.no_teacher_reference and not (args.out / "results" / "ref_teacher.json").exists()
            and _claim(args.out / "teacher_ref.lock")):
        for split in ("valid", "test"):
            invoke(["score-teacher", "--teacher", ctx["teacher"], "--data", ctx["view"], "--split", split,
                    "--run", ctx["runs"][split], "--cache", ctx["cache"], "--max-length", budget.teacher_max_length])
        reference("teacher", str(ctx["cache"]), ctx, args.out)


def main() -> None:
    """Train and evaluate every entry of the plan not yet done in ``--out``, rewriting the report after each."""
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    budget, plan = budget_and_plan(args)
    check_budget(args.out, budget)
    if args.report_only:
        write_report(args, budget, plan, None, None)
        return

    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    record_time(args.out, started)
    ctx = prepare(args, budget, plan)
    record_time(args.out, started)  # the teacher's training and scoring count too
    reference("BM25", "bm25", ctx, args.out)  # the candidates' own order
    for entry in plan:
        run_entry(entry, ctx, budget, args.out, args.keep_models)
        record_time(args.out, started)
        write_report(args, budget, plan, ctx, started)
    teacher_reference(args, budget, ctx)
    record_time(args.out, started, finished=True)
    write_report(args, budget, plan, ctx, started)


def _claim(path: Path) -> TextIO | None:
    """An exclusive lock on ``path`` held until exit, or None when another process holds it."""
    import fcntl

    handle = open(path, "w")  # noqa: SIM115 - held open: the lock lasts as long as the process
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def check_budget(out: Path, budget: Budget) -> None:
    """Refuse to mix results of different budgets in one folder."""
    from distill.core.errors import ConfigError
    from distill.core.io import write_json_atomic

    path = out / "budget.json"
    # which students a process trains is not part of the budget: two processes (--students bi / ce,
    # --threads 1 each) may share one folder, each resuming its own losses
    current = {k: v for k, v in json.loads(json.dumps(asdict(budget))).items() if k != "students"}
    if path.exists():
        earlier = json.loads(path.read_text())
        earlier.pop("students", None)
        if earlier != current:
            raise ConfigError(f"{out} holds results of another budget ({earlier}); use another --out", path=path)
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, current)


def record_time(out: Path, started: float, finished: bool = False) -> None:
    """Wall time summed over the sessions (and parallel processes: then it is process time) on this folder."""
    import fcntl
    import sys

    from distill.core.io import write_json_atomic

    path = out / "timing.json"
    with open(out / "timing.lock", "w") as lock:  # two processes may share the folder
        fcntl.flock(lock, fcntl.LOCK_EX)
        timing = json.loads(path.read_text()) if path.exists() else {"wall_seconds": 0.0, "sessions": 0}
        timing.pop("current", None)  # the single-process form of the open sessions below
        key = f"{os.getpid()}:{started}"
        counted = timing.setdefault("open", {}).get(key)
        if counted is None:  # a new session (process) on this folder
            timing["sessions"] += 1
            counted = 0.0
        now = time.perf_counter() - started
        timing["wall_seconds"] += now - counted
        timing["open"] = {k: v for k, v in timing["open"].items() if k.startswith(f"{os.getpid()}:")
                          or _alive(int(k.split(":")[0]))}
        timing["open"][key] = now
        timing["command"] = " ".join(["python", *sys.argv])
        timing["finished"] = finished
        write_json_atomic(path, timing)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (its open timing session counts until it ends)."""
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True




if __name__ == "__main__":
    main()

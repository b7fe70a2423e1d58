"""Teacher scoring through Ray (1 and 2 workers) against the single-process engine, same pairs.

The pairs are SciFact test queries' BM25 top-k; the teacher is the packaged all-MiniLM-L6-v2
with a seeded classification head (throughput does not depend on the head's weights), at
--dtype (fp32 by default, so no engine spends time choosing a precision). Each engine
scores all pairs into a fresh cache, in this order: single process, Ray with 1 worker, Ray
with 2 workers, repeated --rounds times (machine load drifts; the order shows it).

Three rates per run: end to end (the engine call, Ray workers loading the model included;
``ray.init`` is timed once, apart), steady (pairs written after the first shard, over the
time from the first shard to the last), and pairs per CPU second (the single process's own
CPU time; for Ray, the driver's plus every Ray process's: raylet, GCS, workers). On cores
other jobs share, wall-clock rates follow how many processes compete for them, so the CPU
rate is the fairer measure of overhead there. The overhead goal is the Ray path with 1 worker
within 10% of the single process; on 2 cores no speed-up is expected from 2 workers, since
torch already uses both cores in one process.

    python scripts/bench_ray.py [--queries 20 --k 50 --rounds 2] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from _common import DEFAULT_DATA, cpu_description, save_results
from bench_teacher import build_model

ENGINES = ("single", "ray_1", "ray_2")


class ShardClock:
    """Times every batch's shard a cache writes (both engines write through TeacherCache.append),
    leaving out the final compaction's."""

    def __init__(self) -> None:
        from distill.cache.store import TeacherCache

        self.stamps: list[tuple[float, int]] = []
        self.compacting = False
        append, compact = TeacherCache.append, TeacherCache.compact
        clock = self

        def timed_append(cache, scored):
            path = append(cache, scored)
            if not clock.compacting:
                clock.stamps.append((time.perf_counter(), scored.height))
            return path

        def flagged_compact(cache):
            clock.compacting = True
            try:
                compact(cache)
            finally:
                clock.compacting = False

        TeacherCache.append, TeacherCache.compact = timed_append, flagged_compact

    def steady_rate(self) -> float | None:
        """Pairs per second from the first shard written to the last."""
        if len(self.stamps) < 2:
            return None
        (t0, _), (t1, _) = self.stamps[0], self.stamps[-1]
        return sum(n for _, n in self.stamps[1:]) / (t1 - t0)


class CpuClock:
    """CPU seconds (user + system) spent by this process and, with ``family``, every process below
    it (a local Ray's raylet, GCS and workers), polled twice a second from a thread so workers
    that exit before the end are counted up to their last poll. On shared cores wall time
    follows how many processes compete; CPU time is what an engine costs."""

    def __init__(self, family: bool) -> None:
        import threading

        import psutil

        self._me = psutil.Process()
        self._family = family
        self._seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._poll()
        self._start = sum(self._seen.values())
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        import psutil

        processes = [self._me, *(self._me.children(recursive=True) if self._family else [])]
        for process in processes:
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            self._seen[process.pid] = times.user + times.system

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self._poll()

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self._poll()
        return sum(self._seen.values()) - self._start


def run_engine(engine: str, teacher, dataset, run, folder: Path, flush_pairs: int, clock: ShardClock) -> dict:
    from distill.cache.scoring import score_into_cache
    from distill.cache.store import TeacherCache
    from distill.core.manifest import frame_hash
    from teachers.ray_engine import score_on_ray

    cache = TeacherCache.create_or_open(folder, teacher.fingerprint(), frame_hash(dataset.corpus))
    clock.stamps.clear()
    cpu = CpuClock(family=engine != "single")
    start = time.perf_counter()
    if engine == "single":
        stats = score_into_cache(teacher, dataset, run, cache, flush_pairs=flush_pairs, show_progress=False)
    else:
        stats = score_on_ray(teacher, dataset, run, cache, flush_pairs=flush_pairs, show_progress=False,
                             num_workers=int(engine.split("_")[1]))
    seconds = time.perf_counter() - start
    cpu_s = cpu.stop()
    steady = clock.steady_rate()
    shards = [(t, n) for t, n in clock.stamps]
    return {"engine": engine, "pairs": stats.scored, "seconds": round(seconds, 2),
            "pairs_per_s": round(stats.scored / seconds, 2), "steady_pairs_per_s": steady and round(steady, 2),
            "cpu_s": round(cpu_s, 1), "pairs_per_cpu_s": round(stats.scored / cpu_s, 2),
            "first_shard_s": round(shards[0][0] - start, 2) if shards else None,
            "scores": TeacherCache.open(folder).scores().sort("qid", "docid")}


def summarise(runs: list[dict]) -> dict:
    """Median rates per engine, and the Ray ones as ratios to the single process."""
    table = {}
    for engine in ENGINES:
        mine = [r for r in runs if r["engine"] == engine]
        table[engine] = {
            "pairs_per_s": round(statistics.median(r["pairs_per_s"] for r in mine), 2),
            "steady_pairs_per_s": round(statistics.median(r["steady_pairs_per_s"] for r in mine), 2),
            "pairs_per_cpu_s": round(statistics.median(r["pairs_per_cpu_s"] for r in mine), 2),
        }
    for engine in ENGINES[1:]:
        for key in ("pairs_per_s", "steady_pairs_per_s", "pairs_per_cpu_s"):
            table[engine][f"{key}_vs_single"] = round(table[engine][key] / table["single"][key], 3)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--queries", type=int, default=20, help="Test queries to score.")
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--dtype", default="fp32", help="fp32 | bf16 | fp16 | auto.")
    parser.add_argument("--flush-pairs", type=int, default=64, help="Pairs per batch (one cache shard each).")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="8 queries x top-20, one round.")
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    args = parser.parse_args()
    if args.quick:
        args.queries, args.k, args.rounds = 8, 20, 1
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray starts its workers at niceness +15 by default; at the driver's own niceness the two
    # engines compete for the (shared) cores on equal terms.
    os.environ.setdefault("RAY_worker_niceness", "0")

    import ray
    import torch

    from distill.data.beir import load_beir
    from distill.data.bm25 import bm25_run
    from teachers import CrossEncoderTeacher

    dataset = load_beir(args.data, "test")
    dataset.queries = dataset.queries.head(args.queries)
    run = bm25_run(dataset, args.k)
    clock = ShardClock()
    runs = []
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        model = build_model(tmp / "model", args.max_length)
        teacher = CrossEncoderTeacher(model, max_length=args.max_length, dtype=args.dtype)
        teacher.score(dataset.query_texts(run["qid"].head(2)), dataset.doc_texts(run["docid"].head(2)))  # settle
        start = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        ray_init_s = time.perf_counter() - start
        for round_ in range(args.rounds):
            for engine in ENGINES:
                runs.append(run_engine(engine, teacher, dataset, run, tmp / f"{engine}_{round_}", args.flush_pairs,
                                       clock))
                print(f"round {round_} {engine}: {runs[-1]['pairs_per_s']} pairs/s "
                      f"(steady {runs[-1]['steady_pairs_per_s']}), {runs[-1]['pairs_per_cpu_s']} pairs/CPU-s",
                      flush=True)
        ray.shutdown()
    reference = runs[0]["scores"]
    max_diff = max(float((r["scores"]["score"] - reference["score"]).abs().max()) for r in runs)
    for r in runs:
        del r["scores"]
    results = {"pairs": run.height, "queries": args.queries, "k": args.k, "max_length": args.max_length,
               "dtype": teacher.dtype, "flush_pairs": args.flush_pairs, "rounds": args.rounds,
               "cpu": cpu_description(), "torch_threads": torch.get_num_threads(),
               "load_average_1m_at_end": round(os.getloadavg()[0], 2), "ray_init_s": round(ray_init_s, 2),
               "max_abs_score_diff_vs_first_single": max_diff, "summary": summarise(runs), "runs": runs}
    save_results(args.out, "bench_ray" + ("_quick" if args.quick else ""), results)


if __name__ == "__main__":
    main()

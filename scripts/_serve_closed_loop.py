"""``scripts/bench_serve.py --closed-loop N``: batching across requests, measured (see bench_serve's docstring).

First the ceiling: the cascade's last batchable model stage (a bi-encoder embedding the posted texts, or a
cross-encoder) scoring the closed loop's requests of 20 documents through the server's own batch path
(:func:`distill.serve.batcher.request_scorer`), one request per call against 16 per call (320 documents), in
this process on ``--threads`` torch threads: what one model call for many requests can gain at most. Then the
protocol: N closed-loop clients on a fresh server with batching off (``--max-batch-wait-ms 0``), then on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from collections import Counter
from pathlib import Path

import numpy as np
from _common import save_results
from _serve_open_loop import unloaded_p50
from bench_serve import cpu_flags, free_port, payloads, start_server, stop_server, wait_healthy

CEILING_REQUESTS = 16  # requests per call in the ceiling's batched side (16 x 20 = 320 documents)
CEILING_REPEATS = 5


def closed_loop_bodies(data: Path, split: str, deadline_ms: float, api: str) -> list[bytes]:
    """Each query with its BM25 top 20: ``/v1/rerank`` bodies of texts with ``top_n`` 5 (``api`` cohere), or
    ``/rerank`` bodies with the BM25 scores and ``top_k`` 5 (native)."""
    from distill.rankers.documents import join_title

    if api == "native":
        return [json.dumps({**b, "top_k": 5, "deadline_ms": deadline_ms}).encode() for b in payloads(data, split, 20)]
    return [json.dumps({"model": "distill", "query": b["query"], "top_n": 5, "deadline_ms": deadline_ms,
                        "documents": [join_title(d["title"], d["text"]) for d in b["documents"]]}).encode()
            for b in payloads(data, split, 20)]


async def closed_loop_client(client, bodies: list[bytes], api: str, until: float, counts: Counter,
                             latency_ms: list, rng: np.random.Generator) -> None:
    """Post, wait for the answer, post again, until ``until``."""
    import httpx

    while time.perf_counter() < until:
        start = time.perf_counter()
        try:
            r = await client.post("/rerank" if api == "native" else "/v1/rerank",
                                  content=bodies[int(rng.integers(len(bodies)))],
                                  headers={"content-type": "application/json"})
        except httpx.HTTPError as err:
            counts[f"error {type(err).__name__}"] += 1
            continue
        if r.status_code == 200:  # the latency of answers (a 503 is quick and says nothing of the deadline)
            latency_ms.append((time.perf_counter() - start) * 1000.0)
        full = r.status_code == 200 and not (r.json() if api == "native" else r.json()["meta"])["degraded"]
        counts["full" if full else "degraded" if r.status_code == 200 else f"http {r.status_code}"] += 1


def batch_stats(metrics_text: str) -> dict:
    """Mean requests and pairs per batch and mean wait (ms) from ``/metrics``, summed over stages."""
    from prometheus_client.parser import text_string_to_metric_families

    sums: Counter = Counter()
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name.startswith(("distill_batch_", "distill_disconnected", "distill_late_answers",
                                       "distill_handoff_ms")):
                sums[sample.name] += sample.value
    batches = sums["distill_batch_requests_count"]
    return {"batches": int(batches),
            "requests_per_batch": round(sums["distill_batch_requests_sum"] / batches, 2) if batches else None,
            "pairs_per_batch": round(sums["distill_batch_pairs_sum"] / batches, 2) if batches else None,
            "mean_wait_ms": round(1000 * sums["distill_batch_wait_seconds_sum"]
                                  / max(sums["distill_batch_wait_seconds_count"], 1), 3),
            "disconnected": int(sums["distill_disconnected_total"]),
            "late_by_server": int(sums["distill_late_answers_total"]),
            "handoff_ms": round(sums["distill_handoff_ms"], 2)}


async def closed_loop_run(args: argparse.Namespace, wait_ms: float | None, deadline: float | None,
                          rng: np.random.Generator) -> dict:
    """One server (``--max-batch-wait-ms wait_ms``; None: its default), ``--closed-loop`` clients on it."""
    import httpx

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    extra = () if wait_ms is None else ("--max-batch-wait-ms", f"{wait_ms:g}")
    server = start_server(args, port, args.out / f"server_closed_loop_{wait_ms}.log", extra)
    try:
        await wait_healthy(base, server)
        p50, _ = await unloaded_p50(base, payloads(args.data, args.split, 20), 10)
        deadline = deadline or float(math.ceil(3 * p50))
        bodies = closed_loop_bodies(args.data, args.split, deadline, args.closed_loop_api)
        counts: Counter = Counter()
        latency: list = []
        limits = httpx.Limits(max_connections=args.closed_loop + 1)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=args.timeout_s) as client:
            until = time.perf_counter() + args.closed_loop_s
            await asyncio.gather(*(closed_loop_client(client, bodies, args.closed_loop_api, until, counts, latency, rng)
                                   for _ in range(args.closed_loop)))
            metrics = (await client.get("/metrics")).text
    finally:
        stop_server(server)
    ms = np.asarray(latency)
    return {"max_batch_wait_ms": "default" if wait_ms is None else wait_ms, "clients": args.closed_loop,
            "seconds": args.closed_loop_s, "deadline_ms": deadline, "unloaded_p50_ms": round(p50, 2),
            "answers": dict(counts), "full_per_s": round(counts["full"] / args.closed_loop_s, 2),
            "p50_ms": round(float(np.percentile(ms, 50)), 2) if ms.size else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 2) if ms.size else None,
            "within_deadline": round(float((ms <= deadline).mean()), 4) if ms.size else None, **batch_stats(metrics)}


async def closed_loop(args: argparse.Namespace) -> dict:
    """Batching off (``--max-batch-wait-ms 0``), then on; the first run's deadline serves both."""
    rng = np.random.default_rng(args.seed)
    off = await closed_loop_run(args, 0.0, args.deadline_ms, rng)
    print(off, flush=True)
    await asyncio.sleep(3.0)
    on = await closed_loop_run(args, args.max_batch_wait_ms, off["deadline_ms"], rng)
    print(on, flush=True)
    return {"spec": str(args.spec), "data": str(args.data), "split": args.split, "workers": args.workers,
            "threads": args.threads, "api": args.closed_loop_api, "runs": [off, on], "machine": cpu_flags()}


def closed_loop_table(runs: list[dict]) -> str:
    head = ("| --max-batch-wait-ms | clients | deadline ms | full answers (/s) | degraded | other | answers: p50 ms, "
            "p99 ms, within deadline | requests / pairs per batch | mean batch wait ms |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in runs:
        answers = r["answers"]
        other = ", ".join(f"{k}: {v}" for k, v in answers.items() if k not in ("full", "degraded")) or "0"
        lines.append(f"| {r['max_batch_wait_ms']} | {r['clients']} | {r['deadline_ms']:g} | {answers.get('full', 0)} "
                     f"({r['full_per_s']}) | {answers.get('degraded', 0)} | {other} | {r['p50_ms']}, {r['p99_ms']}, "
                     f"{r['within_deadline']} | "
                     f"{r['requests_per_batch']} / {r['pairs_per_batch']} | {r['mean_wait_ms']} |")
    return "\n".join(lines)


def ceiling(args: argparse.Namespace) -> dict | None:
    """Pairs per second of the spec's last batchable model stage, requests of 20 documents scored one per call
    against :data:`CEILING_REQUESTS` per call (medians of :data:`CEILING_REPEATS`); None without such a stage."""
    import torch

    from distill.cascade.model import Cascade
    from distill.cascade.runtime import DocumentScorer
    from distill.rankers.documents import Documents
    from distill.serve.batcher import request_scorer

    if args.threads:
        torch.set_num_threads(args.threads)
    cascade = Cascade.read_spec(args.spec)
    stages = [s for s in cascade.stages if DocumentScorer(s.ranker).batchable]
    if not stages:
        return None
    scorer = DocumentScorer(stages[-1].ranker)
    score = request_scorer(scorer)
    requests = [(b["query"], Documents([str(i) for i in range(len(b["documents"]))],
                                       [d["title"] for d in b["documents"]], [d["text"] for d in b["documents"]],
                                       None, np.full(len(b["documents"]), -1, dtype=np.int64)))
                for b in payloads(args.data, args.split, 20)[:CEILING_REQUESTS]]
    score(requests[:2])  # warm up: threads, a settled precision
    pairs = sum(len(d) for _, d in requests)

    def timed(calls: list[list]) -> float:
        runs = []
        for _ in range(CEILING_REPEATS):
            start = time.perf_counter()
            for call in calls:
                score(call)
            runs.append(time.perf_counter() - start)
        return pairs / float(np.median(runs))

    alone, together = timed([[r] for r in requests]), timed([requests])
    return {"stage": stages[-1].name, "documents_per_request": 20, "requests_per_call": len(requests),
            "alone_pairs_per_s": round(alone, 1), "together_pairs_per_s": round(together, 1),
            "ceiling_ratio": round(together / alone, 3), "threads": args.threads}


def main_closed_loop(args: argparse.Namespace) -> None:
    """The ceiling, then the protocol; results saved to ``--out`` and printed as tables."""
    measured = ceiling(args)
    print("ceiling:", measured, flush=True)
    results = asyncio.run(closed_loop(args))
    results["ceiling"] = measured
    if measured:
        off, on = (r["full_per_s"] for r in results["runs"])
        results["batching_ratio"] = round(on / off, 3) if off else None
    save_results(args.out, "bench_serve_closed_loop", results)
    print()
    print(closed_loop_table(results["runs"]))
    if measured:
        m = measured
        print(f"\nceiling ({m['stage']}, {m['threads']} threads): {m['alone_pairs_per_s']} pairs/s one request "
              f"per call, {m['together_pairs_per_s']} pairs/s {m['requests_per_call']} per call "
              f"({m['ceiling_ratio']}x); closed loop: batching {results.get('batching_ratio')}x full answers/s")

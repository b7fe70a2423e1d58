"""Open-loop load on `distill serve`: the sustainable rate, then 0.5x, 1x, 2x and 4x that rate.

Starts ``distill serve SPEC`` as a subprocess on 127.0.0.1 and sends it requests over loopback
from one asyncio process (httpx): Poisson arrivals at a fixed rate, each request sent when it
is due whatever is still in flight (open loop: a slow server cannot slow the load down), at
most ``--max-in-flight`` at once (beyond that a request counts as an error). The client runs
on the same cores as the server: on a 2-core machine its CPU time is taken from the server's.

Each request is one query of ``--data``'s ``--split`` with its BM25 top ``--k`` documents
(``{id, title, text, score}``: the BM25 score is the first stage) and the deadline. Latency
is measured at the client from the request's scheduled send time, so queueing in the client
counts too. A request is answered within the deadline when a 200 or a 503 (shed) arrived
within it; errors are everything else (other statuses, timeouts, refused connections).

Deadline: ``--deadline-ms``, or 3x the client-measured p50 of unloaded, sequential requests.
Sustainable rate: the highest rate (found by growing the rate by 1.5x, then bisecting) at
which no stage is skipped, nothing is shed or fails and the p99 stays within the deadline.

    python scripts/bench_serve.py --spec demo_out/cascade.json --data demo_out/data [--quick] [--mixed]

``--mixed`` adds two runs with hostile clients beside (``scripts/_serve_adversaries.py``, a process
of its own): honest load at 2x the sustainable rate while ``--slow-clients`` slowloris connections
(more than the server's ``--max-connections``) and ``--big-clients`` clients posting ``--big-body-bytes`` bodies
run; then the big-body clients alone, while ``/healthz`` is probed every 50 ms (its latency is the
event loop's: parsing a big body there delays it).

``--closed-loop N`` (``scripts/_serve_closed_loop.py``) measures instead the ceiling of batching (the last
batchable model stage scoring 16 requests of 20 documents in one call against one per call), then N
closed-loop clients, each posting a query of ``--split`` with its
BM25 top 20 document texts to ``/v1/rerank`` (Cohere's shape, ``top_n`` 5) and posting the next as soon
as the answer arrives, for ``--closed-loop-s`` seconds: once with cross-request batching
(``--max-batch-wait-ms``, 5 by default; the server's own default is off) and once with
``--max-batch-wait-ms 0`` (each request scored alone),
a fresh server each; it counts full answers (200 with ``meta.degraded`` false) and reads the batch sizes
and waits from ``/metrics``. The deadline is ``--deadline-ms``, or 3x the unloaded p50 measured on the
first server (the same for both). ``--closed-loop-api native`` posts the same query, documents and ``top_k`` 5
to ``/rerank`` instead, the documents with their BM25 scores (a LightGBM stage then reads them as its
first-stage score; from Cohere's body it takes the documents' BM25 computed from their texts).

    python scripts/bench_serve.py --spec SPEC --data DATA --threads 1 --closed-loop 8

``--build-with-ce MODEL`` first builds ``OUT/cascade.json`` from ``--data`` instead:
``bm25 % k >> lightgbm % 10 >> ce``, a LightGBM ranker trained on the train split's qrels
over BM25's top 30 (lexical features; the cheap middle stage) and the cross-encoder MODEL,
with stage costs measured on 10 queries of ``--split``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from _common import save_results
from _serve_mixed import mixed_runs, mixed_table
from _serve_open_loop import encode, find_sustainable, load, unloaded_p50

LOADS = (0.5, 1.0, 2.0, 4.0)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", type=Path, help="Cascade spec to serve.")
    p.add_argument("--build-with-ce", type=Path, help="Build OUT/cascade.json with this cross-encoder "
                   "(see the docstring) and serve it.")
    p.add_argument("--data", type=Path, required=True, help="BEIR folder: queries, corpus and qrels/<split>.tsv.")
    p.add_argument("--split", default="test")
    p.add_argument("--corpus", type=Path, default=None, help="Passed to `distill serve --corpus` "
                   "(default: DATA/corpus.jsonl; 'none' for no corpus).")
    p.add_argument("--k", type=int, default=100, help="Documents per request (BM25's top k).")
    p.add_argument("--deadline-ms", type=float, default=None, help="Deadline of every request "
                   "(default: 3x the unloaded p50).")
    p.add_argument("--trial-s", type=float, default=30.0, help="Seconds of load per reported rate.")
    p.add_argument("--search-s", type=float, default=12.0, help="Seconds of load per trial of the rate search.")
    p.add_argument("--bisect", type=int, default=4, help="Bisection steps of the rate search.")
    p.add_argument("--min-requests", type=int, default=60, help="A trial lasts long enough for this many "
                   "requests on average, whatever its seconds.")
    p.add_argument("--workers", type=int, default=1, help="`distill serve --workers`.")
    p.add_argument("--queue-size", type=int, default=64, help="`distill serve --queue-size`.")
    p.add_argument("--threads", type=int, default=None, help="`distill serve --threads` (torch threads).")
    p.add_argument("--max-in-flight", type=int, default=512, help="Client bound on open requests.")
    p.add_argument("--timeout-s", type=float, default=10.0, help="Client timeout per request (an error).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("bench_out/serve"))
    p.add_argument("--quick", action="store_true", help="Short trials (a smoke run, not a measurement).")
    p.add_argument("--mixed", action="store_true", help="Also the runs with slow and big-body clients.")
    p.add_argument("--max-connections", type=int, default=64, help="`distill serve --max-connections`.")
    p.add_argument("--max-body-bytes", type=int, default=None, help="`distill serve --max-body-bytes` "
                   "[the server's default].")
    p.add_argument("--slow-clients", type=int, default=96, help="Slowloris connections in the mixed run.")
    p.add_argument("--big-clients", type=int, default=4, help="Clients posting big bodies in the mixed run.")
    p.add_argument("--big-body-bytes", type=int, default=8_000_000, help="Size of their bodies (about): over the "
                   "server's --max-body-bytes they are refused from their declared length, under it admitted as big.")
    p.add_argument("--adversary-nice", type=int, default=0, help="Run the slow and big-body clients at this nice "
                   "level: in production they run on other machines, so on a small machine 19 keeps their own CPU "
                   "from counting against the server (their connections and bytes still do) [0: as they come].")
    p.add_argument("--closed-loop", type=int, default=None, metavar="N", help="Run the closed-loop protocol "
                   "with N clients instead (see the docstring).")
    p.add_argument("--closed-loop-s", type=float, default=15.0, help="Seconds of closed-loop load per server.")
    p.add_argument("--closed-loop-api", choices=("cohere", "native"), default="cohere", help="Post to /v1/rerank "
                   "(texts) or to /rerank (with the BM25 scores).")
    p.add_argument("--max-batch-wait-ms", type=float, default=5.0, help="`distill serve --max-batch-wait-ms` of "
                   "the batched closed-loop run.")
    p.add_argument("--max-batch-tokens", type=int, default=None, help="`distill serve --max-batch-tokens` "
                   "[the server's default].")
    args = p.parse_args()
    if (args.spec is None) == (args.build_with_ce is None):
        p.error("give --spec or --build-with-ce")
    if args.quick:
        args.trial_s, args.search_s, args.bisect, args.min_requests = 6.0, 4.0, 1, 10
    return args


# -- requests ---------------------------------------------------------------------------------


def payloads(data: Path, split: str, k: int) -> list[dict]:
    """One request body per query: its BM25 top k as ``{id, title, text, score}``."""
    import polars as pl

    from distill.data.beir import load_beir
    from distill.data.bm25 import bm25_run

    dataset = load_beir(data, split)
    run = bm25_run(dataset, k)
    corpus = dataset.corpus.select("docid", "title", "text")
    docs = run.join(corpus, on="docid", how="left").sort(["qid", "score"], descending=[False, True])
    queries = dict(zip(dataset.queries["qid"], dataset.queries["text"]))
    out = []
    for part in docs.partition_by("qid", maintain_order=True):
        out.append({"query": queries[part["qid"][0]], "documents": [
            {"id": r["docid"], "title": r["title"] or "", "text": r["text"] or "", "score": float(r["score"])}
            for r in part.select("docid", "title", "text", pl.col("score")).to_dicts()]})
    return out


def build_cascade(data: Path, split: str, ce: Path, k: int, out: Path) -> Path:
    """``bm25 % k >> lightgbm % 10 >> ce`` (see the module docstring), written to ``out/cascade.json``."""
    from distill.cascade.model import StageCost, stage
    from distill.data.beir import load_beir
    from distill.data.bm25 import bm25_run
    from distill.rankers.loading import RunRanker, load_ranker
    from students.lightgbm import LightGBMConfig, LightGBMRanker, train_lightgbm_student

    folder = out / "lightgbm"
    if not (folder / "distill.json").exists():
        train = load_beir(data, "train")
        run = bm25_run(train, 30)  # its BM25 scores stand in for a teacher; qrels_weight 1: the grades are qrels
        train_lightgbm_student(train, run, run.select("qid", "docid", "score"), folder,
                               LightGBMConfig(qrels_weight=1.0))
    cascade = (stage("bm25", RunRanker(), "bm25") % k
               >> stage("lightgbm", LightGBMRanker(folder), str(folder.resolve())) % 10
               >> stage("ce", load_ranker(str(ce), name="ce"), str(ce.resolve())))
    measured: dict[str, list[tuple[float, float]]] = {s.name: [] for s in cascade.stages}
    for i, body in enumerate(payloads(data, split, k)[:11]):
        result = cascade.rank(body["query"], body["documents"])
        if i:  # the first call pays for lazy initialisation
            for report in result.stages:
                measured[report.name].append((report.n_in, report.ms))
    cascade.costs = {"bm25": StageCost(), **{name: StageCost.fit(points) for name, points in measured.items()
                                             if name != "bm25"}}
    cascade.write_spec(out / "cascade.json")
    print("built", out / "cascade.json", {n: c for n, c in cascade.costs.items()}, flush=True)
    return out / "cascade.json"


# -- the server -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, port: int, log: Path, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    corpus = args.corpus or args.data / "corpus.jsonl"
    cmd = [sys.executable, "-m", "distill.app.cli", "serve", str(args.spec), "--port", str(port),
           "--workers", str(args.workers), "--queue-size", str(args.queue_size),
           "--max-connections", str(args.max_connections), *extra]
    for option in ("max_batch_tokens", "max_body_bytes"):
        if getattr(args, option) is not None:
            cmd += ["--" + option.replace("_", "-"), str(getattr(args, option))]
    if str(corpus) != "none":
        cmd += ["--corpus", str(corpus)]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    log.parent.mkdir(parents=True, exist_ok=True)
    print("server:", " ".join(cmd), flush=True)
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)


async def wait_healthy(base: str, server: subprocess.Popen, limit_s: float = 600.0) -> dict:
    import httpx

    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, timeout=2.0) as client:
        while time.perf_counter() - start < limit_s:
            if server.poll() is not None:
                raise SystemExit(f"the server exited with code {server.returncode}; see its log")
            try:
                r = await client.get("/healthz")
                if r.status_code == 200:
                    return r.json()
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.5)
    raise SystemExit("the server did not come up")


def cpu_flags() -> dict:
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": model, "cores": os.cpu_count(), "avx2": "avx2" in flags, "avx512f": "avx512f" in flags,
            "avx512_bf16": "avx512_bf16" in flags, "amx": "amx_tile" in flags,
            "loadavg_at_start": os.getloadavg()}


def table(rows: list[dict]) -> str:
    head = ("| load | rate (req/s) | requests | p50 ms | p99 ms | within deadline | 200 full | 200 degraded "
            "| 503 shed | errors | stages skipped |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        skipped = ", ".join(f"{k} {v}" for k, v in r["skipped"].items()) or "none"
        lines.append(f"| {r['load']}x | {r['rate']:.1f} | {r['requests']} | {r['p50_ms']} | {r['p99_ms']} | "
                     f"{r['within_deadline']:.1%} | {r['ok']} | {r['degraded']} | {r['shed']} | {r['errors']} | "
                     f"{skipped} |")
    return "\n".join(lines)


def stop_server(server: subprocess.Popen) -> None:
    """Terminate a server process, killing it if it has not exited within 30 s."""
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()


async def bench(args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(args.seed)
    requests = payloads(args.data, args.split, args.k)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(args, port, args.out / "server.log")
    try:
        health = await wait_healthy(base, server)
        print("serving", health, flush=True)
        p50, skipped = await unloaded_p50(base, requests, 10 if args.quick else 30)
        if skipped:
            print(f"note: stages skipped even under a 60 s deadline: {Counter(skipped)}", flush=True)
        deadline = args.deadline_ms or float(math.ceil(3 * p50))
        print(f"unloaded p50 {p50:.1f} ms; deadline {deadline:g} ms", flush=True)
        bodies = encode(requests, deadline)
        sustainable, search = await find_sustainable(base, bodies, 0.5 * 1000.0 / p50, deadline, args, rng)
        rows = []
        for factor in LOADS:
            trial = await load(base, bodies, factor * sustainable, args.trial_s, deadline, args, rng)
            rows.append({"load": factor, **trial.summary()})
            print(rows[-1], flush=True)
            await asyncio.sleep(3.0)
        hostile_runs = await mixed_runs(base, port, bodies, sustainable, deadline, args, rng) if args.mixed else []
    finally:
        stop_server(server)
    return {"cascade": health["cascade"], "spec": str(args.spec), "data": str(args.data), "split": args.split,
            "k": args.k, "workers": args.workers, "threads": args.threads, "queue_size": args.queue_size,
            "unloaded_p50_ms": round(p50, 2),
            "deadline_ms": deadline, "sustainable_rate": round(sustainable, 2), "search": search, "rows": rows,
            "max_connections": args.max_connections, "hostile": hostile_runs, "machine": cpu_flags(),
            "quick": args.quick, "adversary_nice": args.adversary_nice}


def main() -> None:
    args = parse_args()
    if args.build_with_ce is not None:
        args.spec = build_cascade(args.data, args.split, args.build_with_ce, args.k, args.out)
    if args.closed_loop is not None:
        from _serve_closed_loop import main_closed_loop

        main_closed_loop(args)
        return
    results = asyncio.run(bench(args))
    save_results(args.out, "bench_serve", results)
    print()
    print(table(results["rows"]))
    if results["hostile"]:
        print()
        print(mixed_table(results["hostile"]))


if __name__ == "__main__":
    main()

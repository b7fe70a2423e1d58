"""The mixed runs of `bench_serve.py --mixed`: honest open-loop load beside hostile clients
(``_serve_adversaries.py``, a process of its own), with ``/healthz`` probed meanwhile. See that script's docstring."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
from _serve_open_loop import load


async def probe_healthz(base: str, stop: asyncio.Event, interval_s: float = 0.05) -> list[float]:
    """Client-measured latency (ms) of ``GET /healthz`` every ``interval_s`` until ``stop``; a failed probe is inf."""
    import httpx

    ms = []
    async with httpx.AsyncClient(base_url=base, timeout=10.0) as client:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                ok = (await client.get("/healthz")).status_code == 200
            except httpx.HTTPError:
                ok = False
            ms.append((time.perf_counter() - start) * 1000.0 if ok else math.inf)
            await asyncio.sleep(interval_s)
    return ms


async def hostile(base: str, port: int, args: argparse.Namespace, slow: int, big: int, seconds: float,
                  honest=None) -> dict:
    """Adversaries (a subprocess) for ``seconds``, ``/healthz`` probed meanwhile, and the ``honest`` load
    (a coroutine, started 2 s after them); what each saw."""
    out = args.out / f"adversaries_{slow}_{big}.json"
    adversaries = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).with_name("_serve_adversaries.py")), "--port", str(port), "--slow",
        str(slow), "--big", str(big), "--seconds", str(seconds + 4.0), "--data", str(args.data), "--out", str(out),
        "--body-bytes", str(args.big_body_bytes),
        preexec_fn=(lambda: os.nice(args.adversary_nice)) if args.adversary_nice else None)
    stop = asyncio.Event()
    probe = asyncio.create_task(probe_healthz(base, stop))
    await asyncio.sleep(2.0)
    trial = await honest if honest is not None else await asyncio.sleep(seconds)
    stop.set()
    health = np.asarray(await probe)
    await adversaries.wait()
    pct = {f"healthz_p{q}_ms": round(float(np.percentile(health, q)), 2) for q in (50, 90, 99)}
    return {**pct, "healthz_probes": int(health.size), "adversaries": json.loads(out.read_text()),
            **({"honest": trial.summary()} if honest is not None else {})}


async def mixed_runs(base: str, port: int, bodies: list[bytes], sustainable: float, deadline: float,
                     args: argparse.Namespace, rng: np.random.Generator) -> list[dict]:
    """Honest load at 2x the sustainable rate alone and beside slow and big-body clients; then big bodies
    alone, and no load at all (``/healthz``'s own latency on this machine, for reference)."""
    seconds = max(args.trial_s, args.min_requests / (2.0 * sustainable))
    runs = []
    for name, slow, big in (("2x alone", 0, 0), ("2x + slow + big", args.slow_clients, args.big_clients)):
        honest = load(base, bodies, 2.0 * sustainable, args.trial_s, deadline, args, rng)
        runs.append({"run": name, **await hostile(base, port, args, slow, big, seconds, honest)})
        print(runs[-1], flush=True)
        await asyncio.sleep(3.0)
    runs.append({"run": "no load", **await hostile(base, port, args, 0, 0, args.trial_s)})
    print(runs[-1], flush=True)
    await asyncio.sleep(3.0)
    runs.append({"run": "big bodies", **await hostile(base, port, args, 0, args.big_clients, args.trial_s)})
    print(runs[-1], flush=True)
    return runs


def mixed_table(runs: list[dict]) -> str:
    head = ("| run | honest requests | within deadline | 200 | 503 shed | errors | slow connections (opened / "
            "dropped 408 / reset) | big bodies answered (by status) | /healthz p50 / p90 / p99 ms |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in runs:
        h, adv = r.get("honest"), r["adversaries"]
        slow = adv["slow"]
        big = ", ".join(f"{k.removeprefix('http_')}: {v}" for k, v in sorted(adv["big"].items())) or "-"
        honest = (f"{h['requests']} at {h['rate']:.1f}/s | {h['within_deadline']:.1%} | {h['ok'] + h['degraded']} | "
                  f"{h['shed']} | {h['errors']}" if h else "- | - | - | - | -")
        lines.append(f"| {r['run']} | {honest} | {slow.get('opened', 0)} / {slow.get('answered_408', 0)} / "
                     f"{slow.get('reset', 0)} | {big} | {r['healthz_p50_ms']} / {r['healthz_p90_ms']} / "
                     f"{r['healthz_p99_ms']} |")
    return "\n".join(lines)

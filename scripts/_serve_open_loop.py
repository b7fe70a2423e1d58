"""The open-loop client of `bench_serve.py`: Poisson arrivals at a fixed rate, and the search for the
sustainable rate (the highest at which nothing is skipped, shed or late). See that script's docstring."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Trial:
    """What one rate did, as the client saw it."""

    rate: float
    seconds: float
    deadline_ms: float
    requests: int = 0
    ok: int = 0  # 200, every stage ran
    degraded: int = 0  # 200 with a skipped stage
    shed: int = 0  # 503
    errors: Counter = field(default_factory=Counter)
    within: int = 0  # 200 or 503 within the deadline
    skipped: Counter = field(default_factory=Counter)  # per stage
    latency_ms: list = field(default_factory=list)  # 200 and 503
    ok_latency_ms: list = field(default_factory=list)  # 200

    def summary(self) -> dict:
        answered = np.asarray(self.latency_ms)
        ok = np.asarray(self.ok_latency_ms)

        def pct(a, q):
            return round(float(np.percentile(a, q)), 2) if a.size else None

        n = max(self.requests, 1)
        return {
            "rate": round(self.rate, 2), "seconds": round(self.seconds, 1), "deadline_ms": self.deadline_ms,
            "requests": self.requests, "ok": self.ok, "degraded": self.degraded, "shed": self.shed,
            "errors": sum(self.errors.values()), "error_kinds": dict(self.errors),
            "within_deadline": round(self.within / n, 4), "answered_200": round((self.ok + self.degraded) / n, 4),
            "p50_ms": pct(answered, 50), "p99_ms": pct(answered, 99), "p99_200_ms": pct(ok, 99),
            "skipped": dict(self.skipped),
        }

    def sustainable(self) -> bool:
        s = self.summary()
        return (self.requests > 0 and self.degraded == 0 and self.shed == 0 and s["errors"] == 0
                and s["p99_ms"] is not None and s["p99_ms"] <= self.deadline_ms)


async def one(client, body: bytes, scheduled: float, trial: Trial) -> None:
    import httpx

    try:
        r = await client.post("/rerank", content=body, headers={"content-type": "application/json"})
    except httpx.TimeoutException:
        trial.errors["timeout"] += 1
        return
    except httpx.TransportError as err:
        trial.errors[type(err).__name__] += 1
        return
    ms = (time.perf_counter() - scheduled) * 1000.0
    if r.status_code == 200:
        stages = r.json()["stages"]
        skipped = [s["name"] for s in stages if not s["ran"]]
        trial.skipped.update(skipped)
        trial.degraded += bool(skipped)
        trial.ok += not skipped
        trial.ok_latency_ms.append(ms)
    elif r.status_code == 503:
        trial.shed += 1
    else:
        trial.errors[f"http {r.status_code}"] += 1
        return
    trial.latency_ms.append(ms)
    trial.within += ms <= trial.deadline_ms


async def load(base: str, bodies: list[bytes], rate: float, seconds: float, deadline_ms: float,
               args: argparse.Namespace, rng: np.random.Generator) -> Trial:
    """Poisson arrivals at ``rate`` for ``seconds``; waits for the last answer (or its timeout)."""
    import httpx

    seconds = max(seconds, args.min_requests / rate)
    trial = Trial(rate, seconds, deadline_ms)
    limits = httpx.Limits(max_connections=args.max_in_flight, max_keepalive_connections=args.max_in_flight)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=args.timeout_s) as client:
        tasks: set[asyncio.Task] = set()
        start = time.perf_counter()
        due = start
        while True:
            due += rng.exponential(1.0 / rate)
            if due - start > seconds:
                break
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            trial.requests += 1
            if len(tasks) >= args.max_in_flight:
                trial.errors["client in-flight bound"] += 1
                continue
            body = bodies[int(rng.integers(len(bodies)))]
            task = asyncio.create_task(one(client, body, due, trial))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks)
    return trial


def encode(bodies: list[dict], deadline_ms: float) -> list[bytes]:
    return [json.dumps({**b, "deadline_ms": deadline_ms}).encode() for b in bodies]


async def unloaded_p50(base: str, bodies: list[dict], n: int) -> tuple[float, list[str]]:
    """Client-measured p50 of ``n`` sequential requests with a generous deadline, and any stage skipped."""
    import httpx

    ms, skipped = [], []
    async with httpx.AsyncClient(base_url=base, timeout=60.0) as client:
        for body in encode(bodies[:n], 60_000.0):
            start = time.perf_counter()
            r = await client.post("/rerank", content=body, headers={"content-type": "application/json"})
            r.raise_for_status()
            ms.append((time.perf_counter() - start) * 1000.0)
            skipped += [s["name"] for s in r.json()["stages"] if not s["ran"]]
    return float(np.median(ms)), skipped


async def find_sustainable(base: str, bodies: list[bytes], start_rate: float, deadline_ms: float,
                           args: argparse.Namespace, rng: np.random.Generator) -> tuple[float, list[dict]]:
    """Grow the rate by 1.5x until a trial is not sustainable, then bisect; the highest passing rate."""
    tried, good, bad, rate = [], None, None, start_rate
    while good is None or bad is None:
        trial = await load(base, bodies, rate, args.search_s, deadline_ms, args, rng)
        tried.append(trial.summary() | {"sustainable": trial.sustainable()})
        print("search", tried[-1], flush=True)
        if trial.sustainable():
            good = rate
        else:
            bad = rate
        if good is None:
            rate /= 2
            if rate < start_rate / 64:
                raise SystemExit("no sustainable rate found: is the deadline below one request's latency?")
        elif bad is None:
            rate *= 1.5
        await asyncio.sleep(2.0)
    for _ in range(args.bisect):
        rate = math.sqrt(good * bad)
        trial = await load(base, bodies, rate, args.search_s, deadline_ms, args, rng)
        tried.append(trial.summary() | {"sustainable": trial.sustainable()})
        print("search", tried[-1], flush=True)
        good, bad = (rate, bad) if trial.sustainable() else (good, rate)
        await asyncio.sleep(2.0)
    return good, tried

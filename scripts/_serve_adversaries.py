"""Clients that try to stall `distill serve`, run as their own process beside `bench_serve.py`'s load.

- **slow** clients (slowloris): each opens a connection and sends a request one byte every
  ``--interval-s``, half of them stalling in the headers, half in a declared 100 kB body; when the
  server drops the connection (408, or a reset) the client opens a new one after ``--interval-s``
  (as the classic slowloris tool re-creates its dropped sockets on its next round);
- **big** clients: each posts bodies of about ``--body-bytes`` (8 MB by default: 1,000 documents of ~7,900
  characters, a valid request but for its size) in a closed loop, as fast as the server answers.

At the end (``--seconds``) it writes what happened to ``--out`` (JSON): connections opened, how
each ended, big bodies answered by status and their latency.

    python scripts/_serve_adversaries.py --port 8000 --slow 64 --big 4 --seconds 30 --data DATA --out adv.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from pathlib import Path

SLOW_HEADERS = b"POST /rerank HTTP/1.1\r\nHost: bench\r\ncontent-type: application/json\r\nX-Slow: "
SLOW_BODY = b"POST /rerank HTTP/1.1\r\nHost: bench\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n"


def big_body(data: Path, n_bytes: int, chars: int = 7_900) -> bytes:
    """A ``/rerank`` body of about ``n_bytes``: documents of ``chars`` characters from the corpus's texts."""
    texts = []
    with (data / "corpus.jsonl").open(encoding="utf-8") as f:
        for line in f:
            texts.append(json.loads(line).get("text") or "")
            if sum(map(len, texts)) > 2 * chars:
                break
    pool = " ".join(texts)
    # ~40 bytes of JSON around each text; at most the server's default 1,000 documents, so the body stays valid
    n_docs = min(1000, max(1, n_bytes // (chars + 40)))
    docs = [{"id": f"d{i}", "text": (pool[i:] + " " + pool)[:chars], "score": float(n_docs - i)} for i in range(n_docs)]
    return json.dumps({"query": "what causes the disease", "documents": docs}).encode()


async def slow_client(port: int, opening: bytes, interval_s: float, stop: asyncio.Event, stats: Counter) -> None:
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            stats["connect_failed"] += 1
            await asyncio.sleep(interval_s)
            continue
        stats["opened"] += 1
        try:
            writer.write(opening)
            while not stop.is_set():
                try:
                    data = await asyncio.wait_for(reader.read(65536), interval_s)
                except asyncio.TimeoutError:
                    writer.write(b"x")  # one more byte of the header value or the body
                    await writer.drain()
                    continue
                stats["answered_" + data[9:12].decode(errors="replace") if data else "closed"] += 1
                break
        except (ConnectionError, OSError):
            stats["reset"] += 1
        finally:
            writer.close()
        await asyncio.sleep(interval_s)


async def big_client(port: int, body: bytes, stop: asyncio.Event, stats: Counter, latency_ms: list) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60.0) as client:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                r = await client.post("/rerank", content=body, headers={"content-type": "application/json"})
                stats[f"http_{r.status_code}"] += 1
            except httpx.HTTPError as err:
                stats[type(err).__name__] += 1
            latency_ms.append((time.perf_counter() - start) * 1000.0)


async def run(args: argparse.Namespace) -> dict:
    stop = asyncio.Event()
    slow, big, big_ms = Counter(), Counter(), []
    body = big_body(args.data, args.body_bytes) if args.big else b""
    tasks = [asyncio.create_task(slow_client(args.port, SLOW_HEADERS if i % 2 == 0 else SLOW_BODY, args.interval_s,
                                             stop, slow)) for i in range(args.slow)]
    tasks += [asyncio.create_task(big_client(args.port, body, stop, big, big_ms)) for _ in range(args.big)]
    await asyncio.sleep(args.seconds)
    stop.set()
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    ms = sorted(big_ms)
    return {"slow_clients": args.slow, "slow": dict(slow), "big_clients": args.big, "big_body_bytes": len(body),
            "big": dict(big), "big_p50_ms": round(ms[len(ms) // 2], 1) if ms else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--slow", type=int, default=0, help="Slow-sending clients.")
    p.add_argument("--big", type=int, default=0, help="Clients posting big bodies.")
    p.add_argument("--body-bytes", type=int, default=8_000_000, help="Size of the big bodies (about).")
    p.add_argument("--interval-s", type=float, default=0.5, help="Seconds between a slow client's bytes.")
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--data", type=Path, help="BEIR folder whose corpus.jsonl the big bodies quote.")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    args.out.write_text(json.dumps(asyncio.run(run(args)), indent=1))


if __name__ == "__main__":
    main()

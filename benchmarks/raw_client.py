"""The baseline of the load benchmark: bare openai SDK streaming calls from a thread pool.

No queue, no database: what a service calling ezrouter directly would get. Run as its own
process so that its CPU is measured alone; prints one JSON line. ``--async`` makes the same
calls with the SDK's async client instead, as tasks on one event loop (its HTTP pools of
64 connections each, as the worker's): the other way the SDK offers to hold many calls in
one process.

    python -m benchmarks.raw_client --url http://127.0.0.1:8765/v1 --concurrency 32 --jobs 1000
    python -m benchmarks.raw_client --url ... --concurrency 1000 --jobs 4000 --async
    python -m benchmarks.raw_client --url ... --concurrency 1000 --jobs 6000 --rate 200 --settle 7

``--rate`` starts the calls at that steady rate instead of all at once (the pool still holds
at most ``--concurrency``): ``steady_per_s`` is then the calls ended per second after the
first ``--settle`` seconds and until the last call was started, the throughput of a client
that is offered that rate without end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai

from benchmarks.procstat import cpu_seconds, peak_rss_mb
from service.gateway.shards import pool_limits


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", default="deepseek-v4-flash")
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument(
        "--async", dest="use_async", action="store_true", help="AsyncOpenAI on one event loop"
    )
    parser.add_argument("--rate", type=float, default=None, help="calls started per second")
    parser.add_argument(
        "--settle", type=float, default=0.0, help="seconds of --rate before the steady window"
    )
    args = parser.parse_args()
    if args.use_async:
        print(json.dumps(asyncio.run(run_async(args.url, args.model, args.concurrency, args.jobs))))
        return

    client = openai.OpenAI(api_key="sk-bench", base_url=args.url, max_retries=0, timeout=120)

    ended: list[float] = []  # when each call ended (list.append is atomic)

    def call(i: int) -> bool:
        try:
            stream = client.chat.completions.create(
                model=args.model,
                messages=[{"role": "user", "content": f"raw call {i}"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            parts = [
                chunk.choices[0].delta.content or ""
                for chunk in stream
                if chunk.choices and chunk.choices[0].delta
            ]
            return bool("".join(parts))
        except openai.OpenAIError:
            return False
        finally:
            ended.append(time.perf_counter())

    pid = os.getpid()
    with ThreadPoolExecutor(args.concurrency) as pool:
        list(pool.map(call, range(min(args.concurrency, 8))))  # connections and imports warm
        ended.clear()
        cpu0, start = cpu_seconds(pid), time.perf_counter()
        if args.rate:
            futures = []
            for i in range(args.jobs):
                pause = start + i / args.rate - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                futures.append(pool.submit(call, i))
            results = [f.result() for f in futures]
        else:
            results = list(pool.map(call, range(args.jobs)))
        elapsed, cpu = time.perf_counter() - start, cpu_seconds(pid) - cpu0
    out: dict[str, Any] = {
        "elapsed_s": elapsed,
        "cpu_s": cpu,
        "failed": results.count(False),
        "rss_mb": peak_rss_mb(pid),
    }
    if args.rate:
        window = (start + args.settle, start + (args.jobs - 1) / args.rate)
        out["steady_per_s"] = steady_throughput(ended, window)
    print(json.dumps(out))


def steady_throughput(ended: list[float], window: tuple[float, float]) -> float:
    """Calls (or jobs) ended per second within ``window`` (start, end): what a steady
    offered load gets through once the first calls have come back."""
    low, high = window
    if high <= low:
        raise ValueError("the steady window is empty: more jobs or a shorter --settle")
    return sum(1 for t in ended if low <= t < high) / (high - low)


POOL_CONNECTIONS = 64


async def run_async(url: str, model: str, concurrency: int, jobs: int) -> dict[str, Any]:
    """``jobs`` calls, ``concurrency`` at a time, as tasks of this event loop."""
    # One pool for a thousand connections scans them all at each request start and end
    # (as the threaded client's would; see service.gateway.shards): pools of 64.
    clients = [
        openai.AsyncOpenAI(
            api_key="sk-bench",
            base_url=url,
            max_retries=0,
            timeout=120,
            http_client=openai.DefaultAsyncHttpxClient(
                limits=pool_limits(openai, POOL_CONNECTIONS)
            ),
        )
        for _ in range(max(1, -(-concurrency // POOL_CONNECTIONS)))
    ]
    slots = asyncio.Semaphore(concurrency)

    async def call(i: int) -> bool:
        async with slots:
            try:
                stream = await clients[i % len(clients)].chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": f"raw call {i}"}],
                    stream=True,
                    stream_options={"include_usage": True},
                )
                parts = [
                    chunk.choices[0].delta.content or ""
                    async for chunk in stream
                    if chunk.choices and chunk.choices[0].delta
                ]
                return bool("".join(parts))
            except openai.OpenAIError:
                return False

    pid = os.getpid()
    await asyncio.gather(*(call(i) for i in range(min(concurrency, 8))))
    cpu0, start = cpu_seconds(pid), time.perf_counter()
    results = await asyncio.gather(*(call(i) for i in range(jobs)))
    elapsed, cpu = time.perf_counter() - start, cpu_seconds(pid) - cpu0
    return {
        "elapsed_s": elapsed,
        "cpu_s": cpu,
        "failed": results.count(False),
        "rss_mb": peak_rss_mb(pid),
    }


if __name__ == "__main__":
    main()

"""Per-chunk cost of live tokens on the worker's hot path, side by side with the hook off.

Three variants of the same stream read, interleaved run by run:

- ``off``: no live attempt (``EZQ_LIVE_REDIS_URL=off``, or a call outside a job);
- ``on``: a live attempt: every fragment goes to the attempt's deque, the process's flusher
  writes a batch to the job's Redis stream every ``EZQ_LIVE_FLUSH_INTERVAL``, and the
  attempt's end writes what is left (one round trip);
- ``on + listener``: the same while another process follows the stream with ``XREAD
  BLOCK``, as ``ezq api`` does for an open ``/events`` client.

First in memory (pure CPU: the assembler on 500 raw chunks, wall time), then over loopback
against the fake gateway sending chunks a few ms apart, so the flusher really runs many
times per call (CPU time of this process per chunk: the flusher thread is counted).

    python -m benchmarks.live_tokens [--chunks 500] [--calls 12]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis

from benchmarks.stream_assembly import MODEL, network_pieces, sse_body
from service.config import Settings, get_settings
from service.fake_gateway import FakeGateway, Fault
from service.gateway.client import GatewayClient
from service.gateway.stream import StreamAssembler, split_lines
from service.live import publisher as live_publisher
from service.live.events import stream_key

REDIS_URL = os.environ.get("EZQ_LIVE_REDIS_URL", "redis://127.0.0.1:6379/0")

LISTENER = """
import sys, redis
r = redis.Redis.from_url(sys.argv[1])
last = "$"
while True:
    reply = r.xread({sys.argv[2]: last}, block=1000, count=500)
    for _key, entries in reply or []:
        last = entries[-1][0]
"""


@contextmanager
def listener(job_id: uuid.UUID, enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", LISTENER, REDIS_URL, stream_key(job_id)])
    time.sleep(0.3)  # connected and blocked in XREAD
    try:
        yield
    finally:
        proc.terminate()
        proc.wait()


def read(pieces: list[bytes]) -> None:
    # What read_sse does per line, with the hook it has (the assembler's ``live``).
    assembler = StreamAssembler()
    assembler.live = live_publisher.current()
    for line in split_lines(pieces):
        assembler.feed(line)
    assembler.result(request_id=None)


def run(variant: str, job_id: uuid.UUID, fn: Callable[[], None]) -> None:
    if variant == "off":
        fn()
        return
    with live_publisher.attempt(job_id, 1):
        fn()


VARIANTS = ("off", "on", "on + listener")


def measure(
    fns: dict[str, Callable[[], None]], job_ids: dict[str, uuid.UUID], runs: int, clock: str
) -> dict[str, float]:
    """Median seconds per run of each variant, interleaved so drift hits all alike."""
    now = time.perf_counter if clock == "wall" else time.process_time
    samples: dict[str, list[float]] = {v: [] for v in fns}
    for variant in fns:
        run(variant, job_ids[variant], fns[variant])  # warm-up
    for _ in range(runs):
        for variant, fn in fns.items():
            start = now()
            run(variant, job_ids[variant], fn)
            samples[variant].append(now() - start)
    return {v: statistics.median(s) for v, s in samples.items()}


def report(title: str, medians: dict[str, float], chunks: int) -> None:
    print(f"\n{title}")
    base = medians["off"]
    print(f"  {'variant':<18}{'per call':>12}{'per chunk':>12}{'added per chunk':>18}")
    for variant, t in medians.items():
        added = (t - base) / chunks * 1e6
        print(f"  {variant:<18}{t * 1e3:>9.2f} ms{t / chunks * 1e6:>9.2f} us{added:>15.2f} us")


def flush_cost(job_id: uuid.UUID, fragments: int = 25, runs: int = 200) -> None:
    """One flush: a batch of ``fragments`` text pieces of one job in one pipelined XADD."""
    pub = live_publisher.publisher()
    assert pub is not None
    samples: dict[str, list[float]] = {"wall": [], "cpu": []}
    with live_publisher.attempt(job_id, 1) as live:
        assert live is not None
        for _ in range(runs):
            for i in range(fragments):
                live.content(f"w{i:04d} ")
            wall, cpu = time.perf_counter(), time.process_time()
            pub.flush()
            samples["wall"].append(time.perf_counter() - wall)
            samples["cpu"].append(time.process_time() - cpu)
    wall_us = statistics.median(samples["wall"]) * 1e6
    cpu_us = statistics.median(samples["cpu"]) * 1e6
    print(
        f"\nOne flush of {fragments} fragments (one XADD, pipelined), median of {runs}:"
        f" {wall_us:.0f} us wall, {cpu_us:.0f} us CPU; one per EZQ_LIVE_FLUSH_INTERVAL per"
        " process, whatever the number of jobs streaming"
    )


def job_thread_cost(jobs: int = 300, fragments: int = 5) -> None:
    """What the hooks cost the job's own thread per job: an attempt that read a few
    fragments, its end, and the job's final event (what the worker pays between the last
    chunk and taking the next message)."""
    pub = live_publisher.publisher()
    assert pub is not None
    ids = [uuid.uuid4() for _ in range(jobs)]
    samples: dict[str, list[float]] = {"wall": [], "cpu": []}
    for job_id in ids:
        view = {"job_id": str(job_id), "status": "succeeded", "content": "w " * fragments}
        wall, cpu = time.perf_counter(), time.thread_time()
        with live_publisher.attempt(job_id, 1) as live:
            assert live is not None
            for i in range(fragments):
                live.content(f"w{i:04d} ")
        live_publisher.job_ended(view)
        samples["wall"].append(time.perf_counter() - wall)
        samples["cpu"].append(time.thread_time() - cpu)
    pub.flush()
    wall_us = statistics.median(samples["wall"]) * 1e6
    cpu_us = statistics.median(samples["cpu"]) * 1e6
    print(
        f"\nOn the job's thread, per job (start, {fragments} fragments, end, final event),"
        f" median of {jobs}: {wall_us:.0f} us wall, {cpu_us:.0f} us CPU"
    )
    redis.Redis.from_url(REDIS_URL).delete(*(stream_key(j) for j in ids))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=500)
    parser.add_argument("--calls", type=int, default=12)
    args = parser.parse_args()
    os.environ["EZQ_LIVE_REDIS_URL"] = REDIS_URL
    get_settings.cache_clear()
    if live_publisher.publisher() is None:
        sys.exit("live tokens are off: set EZQ_LIVE_REDIS_URL")
    client = redis.Redis.from_url(REDIS_URL)
    job_ids = {v: uuid.uuid4() for v in VARIANTS}
    try:
        pieces = network_pieces(sse_body(args.chunks))
        fns = {v: (lambda: read(pieces)) for v in VARIANTS}
        with listener(job_ids["on + listener"], True):
            medians = measure(fns, job_ids, 30, "wall")
        report(
            f"In memory: {args.chunks} content chunks, wall time (median of 30)",
            medians,
            args.chunks,
        )

        delay = 0.002
        with FakeGateway(chunk_chars=6).start() as gateway:
            settings = Settings(ezrouter_api_key="sk-bench", ezrouter_base_url=gateway.url)
            ours = GatewayClient(settings)
            reply = "".join(f"w{i:04d} " for i in range(args.chunks))
            messages = [{"role": "user", "content": "benchmark"}]

            def call() -> None:
                gateway.add_faults(Fault(reply=reply, chunk_delay=delay))
                ours.complete(MODEL, messages, {}, "openai")

            fns = dict.fromkeys(VARIANTS, call)
            with listener(job_ids["on + listener"], True):
                medians = measure(fns, job_ids, args.calls, "cpu")
            ours.close()
        report(
            f"Over loopback, {args.chunks} chunks {delay * 1e3:g} ms apart (about"
            f" {args.chunks * delay:.1f} s a call): CPU time of the worker process"
            f" (median of {args.calls})",
            medians,
            args.chunks,
        )
        entries = client.xlen(stream_key(job_ids["on"]))
        print(f"  stream entries written for one job over all runs: {entries}")
        flush_cost(job_ids["on"])
        job_thread_cost()
    finally:
        client.delete(*(stream_key(j) for j in job_ids.values()))


if __name__ == "__main__":
    main()

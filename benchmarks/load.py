"""One worker process under load, side by side with the bare openai SDK in the same run.

For each row (gateway latency, calls in flight, jobs) it starts nothing new but a worker:
the fake gateway runs in its own process for the whole run, the raw client (the openai
SDK streaming from a thread pool, no queue, no database) runs in another, then the same
number of jobs go through one real ``ezq worker`` process, sent by task name with the
request in the kwargs, as a foreign Celery producer sends them. Printed per row:
throughput and its ratio to the raw client, CPU per job by process (worker, the Postgres
backends of the benchmark's database, Redis, the fake gateway), the worker's peak RSS.
Then, at half of the measured saturation rate and after the worker's first 2 s (reported
apart): enqueue to first gateway byte p50/p99 and a job's final commit to its webhook
received p50.

    python -m benchmarks.load            # the table of issue rows (a few minutes)
    python -m benchmarks.load --smoke    # small N, under a minute
    python -m benchmarks.load --row 0:32:2000 --row 5:1000:4000 --paced 0
    python -m benchmarks.load --row 0:64:3000 --repeat 3 --paced 0   # medians of 3 runs
    python -m benchmarks.load --row 5:1000:4000 --raw-async --paced 0   # and the async SDK
    python -m benchmarks.load --row 5:1000:8000 --steady --paced 0   # a steady offered load
    python -m benchmarks.load --row 0:32:3000 --cpu last   # worker and raw client pinned

All at once (the default), a row's calls start together, so they end together: every 5 s
the process must finish one thousand calls and start one thousand more, and the raw client
gets ~0.7 of C/L that way. ``--steady`` offers each row with a latency at its C/L rate
instead, the load of a service that keeps sending, and counts the jobs ended per second once
that flow has settled.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis
from celery import Celery

from benchmarks import bounds
from benchmarks.neighbours import Neighbours, describe, running
from benchmarks.procstat import CpuMeter, cpu_seconds, machine_ticks, peak_rss_mb
from benchmarks.raw_client import steady_throughput

ADMIN_DSN = os.environ.get("EZQ_BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
BROKER = os.environ.get("EZQ_BENCH_BROKER", "redis://127.0.0.1:6379/0")
MODEL = "deepseek-v4-flash"
TASK = "ezq.chat_completion"
FULL_ROWS = ["0:32:2000", "0:64:2000", "0.2:64:2560", "5:1000:4000"]
# The 0 ms row long enough (about 3 s of jobs) that a worker's first second does not set
# its ratio: with 200 jobs at 16 in flight it read 0.37 of the raw client, 0.72 with these.
SMOKE_ROWS = ["0:32:1000", "1:200:400"]
# With --steady: seconds after a row's first calls come back before its window opens.
STEADY_SETTLE_S = 2.0


@dataclass
class Row:
    latency: float
    concurrency: int
    jobs: int
    raw: dict[str, float] = field(default_factory=dict)
    # The SDK's async client on one event loop, with ``--raw-async``.
    raw_async: dict[str, float] = field(default_factory=dict)
    ezq: dict[str, float] = field(default_factory=dict)
    # Each run's ezq/s over raw/s, in the order run (one per ``--repeat``).
    ratios: list[float] = field(default_factory=list)
    # Each run's service CPU a job over the raw call's, in the order run.
    cpu_ratios: list[float] = field(default_factory=list)

    @classmethod
    def parse(cls, spec: str) -> Row:
        latency, concurrency, jobs = spec.split(":")
        return cls(float(latency), int(concurrency), int(jobs))

    @property
    def ideal(self) -> float | None:
        """C/L: the throughput of ``concurrency`` calls that each take ``latency``."""
        return self.concurrency / self.latency if self.latency else None

    @property
    def settle_s(self) -> float:
        """The start of a steady run left out of its throughput: the first calls come
        back after ``latency``, and the flow of ends takes a moment to even out."""
        return self.latency + STEADY_SETTLE_S


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http(method: str, url: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - local fake
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 - local fake
        raw = answer.read()
    return json.loads(raw) if raw else None


class Gateway:
    """The fake ezrouter in a process of its own (the documented CLI)."""

    def __init__(self, words: int | None) -> None:
        self.port = _free_port()
        self.origin = f"http://127.0.0.1:{self.port}"
        reply = ["--reply-words", str(words)] if words is not None else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.fake_gateway", "--port", str(self.port), *reply],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError):
                _http("GET", f"{self.origin}/_fake/health")
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the fake gateway did not start")
            time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"{self.origin}/v1"

    def latency(self, seconds: float, times: int) -> None:
        _http("DELETE", f"{self.origin}/_fake/faults")
        _http("DELETE", f"{self.origin}/_fake/requests")
        if seconds:
            fault = {"kind": "normal", "latency": seconds, "times": times}
            _http("POST", f"{self.origin}/_fake/faults", [fault])

    def received_at(self) -> dict[str, float]:
        """When the fake got each request, by the job id found in its prompt."""
        found: dict[str, float] = {}
        for request in _http("GET", f"{self.origin}/_fake/requests"):
            content = request["body"]["messages"][-1]["content"]
            found[content.rsplit(" ", 1)[-1]] = request["received_at"]
        return found

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            # A fake that does not stop must not hold the run (and its output) open.
            self.proc.kill()
            self.proc.wait()


class Backends:
    """The Postgres backends serving one database: their pids (the benchmark's own
    excluded), and how many connections were ever made to it."""

    def __init__(self, conn: psycopg.Connection[Any], database: str) -> None:
        self.conn = conn
        self.database = database

    def pids(self) -> list[int]:
        rows = self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (self.database,),
        ).fetchall()
        return [pid for (pid,) in rows]

    def sessions(self) -> int:
        """Connections made to the database so far (Postgres counts each at its start)."""
        row = self.conn.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = %s", (self.database,)
        ).fetchone()
        return int(row[0]) if row else 0


class Worker:
    """One ``ezq worker`` process (threads pool, ``concurrency`` threads), logging to a file."""

    def __init__(
        self, env: dict[str, str], concurrency: int, log: Path, pool: str, cpu: int | None
    ) -> None:
        self.log = log
        name = f"bench-{secrets.token_hex(3)}@%h"
        command = [sys.executable, "-m", "service", "worker"]
        if cpu is not None:
            command += ["--cpu", str(cpu)]
        if pool != "threads":
            # Celery's own entry point, which monkey-patches before anything is imported.
            command = [*_pinned(cpu), sys.executable, "-m", "celery", "-A", "service.worker.app"]
            command += ["worker", "-P", pool, "-Q", env["EZQ_QUEUE"], "--loglevel", "INFO"]
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*command, "-c", str(concurrency), "-n", name],
                env={**os.environ, **env, "EZQ_WORKER_CONCURRENCY": str(concurrency)},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while b" ready." not in log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start; see {log}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _pinned(cpu: int | None) -> list[str]:
    """A command prefix that runs a process on ``cpu`` only (nothing: not pinned)."""
    return ["taskset", "--cpu-list", str(cpu)] if cpu is not None else []


def worker_cpus(env: dict[str, str], processes: int) -> list[int | None]:
    """The CPU of each of ``processes`` workers: from the last one this process may use
    down, one each (``EZQ_BENCH_CPU`` says where the first goes; empty: none pinned)."""
    first = env.get("EZQ_BENCH_CPU", "")
    if not first:
        return [None] * processes
    cpus = sorted(os.sched_getaffinity(0))
    start = cpus.index(int(first))
    return [cpus[(start - i) % len(cpus)] for i in range(processes)]


def _producer(queue: str) -> Celery:
    """A foreign Celery app: it knows the task's name and kwargs, nothing of ezq."""
    app = Celery("producer", broker=BROKER)
    app.conf.task_default_queue = queue
    return app


def _send(app: Celery, queue: str, tenant: str, text: str, *, results: bool, **extra: Any) -> str:
    """A job sent by task name; with ``results``, as a producer that waits for the job's
    result sends it (Celery's default): the worker then runs the message's own job only,
    and stores its result."""
    task_id = str(uuid.uuid4())
    app.send_task(
        TASK,
        task_id=task_id,
        queue=queue,
        kwargs={
            "model": MODEL,
            "messages": [{"role": "user", "content": f"{text} {task_id}"}],
            "tenant": tenant,
            **extra,
        },
        ignore_result=not results,
    )
    return task_id


def _wait_done(
    conn: psycopg.Connection[Any], tenant: str, jobs: int, on_poll: Any, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        (done,) = conn.execute(
            "SELECT count(*) FROM jobs WHERE tenant = %s"
            " AND status IN ('succeeded', 'failed', 'cancelled')",
            (tenant,),
        ).fetchone() or (0,)
        on_poll()
        if done >= jobs:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {done} of {jobs} jobs ended in {timeout:.0f}s")
        time.sleep(0.2)


def run_raw(
    row: Row,
    gateway: Gateway,
    *,
    use_async: bool = False,
    steady: bool = False,
    cpu: int | None = None,
) -> dict[str, float]:
    """The raw client's run of ``row``: threads, or the async client on one event loop;
    with ``steady``, calls started at the row's C/L and counted in the steady window; on
    ``cpu`` only when given, as the (first) worker is."""
    gateway.latency(row.latency, row.jobs + 100)
    gw0 = cpu_seconds(gateway.proc.pid)
    rate = row.ideal if steady else None
    out = subprocess.run(
        [
            *_pinned(cpu),
            *(sys.executable, "-m", "benchmarks.raw_client", "--url", gateway.url),
            *("--concurrency", str(row.concurrency), "--jobs", str(row.jobs), "--model", MODEL),
            *(("--async",) if use_async else ()),
            *(("--rate", str(rate), "--settle", str(row.settle_s)) if rate else ()),
        ],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return {
        "per_s": result["steady_per_s"] if rate else row.jobs / result["elapsed_s"],
        "cpu_ms": result["cpu_s"] / row.jobs * 1e3,
        "gateway_cpu_ms": (cpu_seconds(gateway.proc.pid) - gw0) / row.jobs * 1e3,
        "rss_mb": result["rss_mb"],
        "failed": result["failed"],
    }


@contextlib.contextmanager
def worker_running(
    env: dict[str, str], concurrency: int, processes: int = 1
) -> Iterator[list[Worker]]:
    """``processes`` worker processes sharing ``concurrency`` threads between them."""
    folder = Path(tempfile.mkdtemp(prefix="ezq-load-"))
    pool = env.get("EZQ_BENCH_POOL", "threads")
    workers: list[Worker] = []
    try:
        for i, cpu in enumerate(worker_cpus(env, processes)):
            threads = concurrency // processes + (1 if i < concurrency % processes else 0)
            workers.append(Worker(env, threads, folder / f"worker{i or ''}.log", pool, cpu))
        yield workers
    finally:
        for worker in workers:
            worker.stop()


def run_ezq(
    row: Row,
    gateway: Gateway,
    env: dict[str, str],
    conn: psycopg.Connection[Any],
    backends: Backends,
    redis_pid: int,
    processes: int = 1,
    *,
    results: bool = False,
    steady: bool = False,
) -> None:
    queue = env["EZQ_QUEUE"]
    tenant = f"load-{secrets.token_hex(4)}"
    app = _producer(queue)
    with worker_running(env, row.concurrency, processes) as workers:
        pids = [w.proc.pid for w in workers]
        gateway.latency(row.latency, row.jobs + 100)
        pg = CpuMeter()
        pg.start(backends.pids())
        peak = [0]

        def sample() -> None:
            pids = backends.pids()
            peak[0] = max(peak[0], len(pids))
            pg.sample(pids)

        w0 = sum(cpu_seconds(p) for p in pids)
        r0, g0 = cpu_seconds(redis_pid), cpu_seconds(gateway.proc.pid)
        # The workers' warm-up opened their steady connections already: what is opened
        # from here on is for the load (a pool that closes what it opens shows here).
        sessions0 = backends.sessions()
        rate = row.ideal if steady else None
        start, wall_start = time.perf_counter(), time.time()
        sampled = start
        sent_at: dict[str, float] = {}
        for i in range(row.jobs):
            if rate:
                pause = start + i / rate - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                if time.perf_counter() - sampled > 1.0:
                    sample()  # a backend opened mid-run is charged from its start
                    sampled = time.perf_counter()
            at = time.time()
            sent_at[_send(app, queue, tenant, f"load job {i}", results=results)] = at
        _wait_done(
            conn,
            tenant,
            row.jobs,
            sample,
            timeout=max(300.0, row.jobs * max(row.latency, 0.01)),
        )
        elapsed = time.perf_counter() - start
        pg.sample(backends.pids())
        opened = backends.sessions() - sessions0
        w1 = sum(cpu_seconds(p) for p in pids)
        r1, g1 = cpu_seconds(redis_pid), cpu_seconds(gateway.proc.pid)
        (failed,) = conn.execute(
            "SELECT count(*) FROM jobs WHERE tenant = %s AND status <> 'succeeded'", (tenant,)
        ).fetchone() or (0,)
        rss = max(peak_rss_mb(p) for p in pids)
        per_s = row.jobs / elapsed
        stages: dict[str, float] = {}
        if rate:
            window = (wall_start + row.settle_s, wall_start + (row.jobs - 1) / rate)
            per_s, stages = _steady_stages(conn, tenant, gateway, sent_at, window, row.latency)
    row.ezq = {
        "per_s": per_s,
        **stages,
        "worker_cpu_ms": (w1 - w0) / row.jobs * 1e3,
        "pg_cpu_ms": pg.total() / row.jobs * 1e3,
        "redis_cpu_ms": (r1 - r0) / row.jobs * 1e3,
        "gateway_cpu_ms": (g1 - g0) / row.jobs * 1e3,
        "rss_mb": rss,
        "pg_connections": peak[0],
        "pg_opened": opened,
        "failed": failed,
    }


def _steady_stages(
    conn: psycopg.Connection[Any],
    tenant: str,
    gateway: Gateway,
    sent_at: dict[str, float],
    window: tuple[float, float],
    latency: float,
) -> tuple[float, dict[str, float]]:
    """A steady run's jobs ended per second in ``window``, and where the time of those
    jobs beyond the gateway's latency went (medians, ms): waiting for a thread (send to
    the claim's transaction), the claim and request (to the fake's receipt), the gateway
    (receipt to first token, less ``latency``), the stream and the record (first token to
    the final commit)."""
    received = gateway.received_at()
    jobs = conn.execute(
        "SELECT id::text, extract(epoch FROM started_at)::float8,"
        " extract(epoch FROM first_token_at)::float8, extract(epoch FROM finished_at)::float8"
        " FROM jobs WHERE tenant = %s",
        (tenant,),
    ).fetchall()
    per_s = steady_throughput([finished for *_, finished in jobs], window)
    low, high = window
    timed = [
        (sent_at[job], started, received[job], first, finished)
        for job, started, first, finished in jobs
        if low <= finished < high and job in received and first is not None
    ]
    if not timed:
        return per_s, {}

    def median_ms(values: Iterator[float]) -> float:
        return statistics.median(values) * 1e3

    return per_s, {
        "wait_ms": median_ms(started - sent for sent, started, *_ in timed),
        "claim_ms": median_ms(got - started for _, started, got, *_ in timed),
        "gateway_ms": median_ms(first - got - latency for *_, got, first, _ in timed),
        "record_ms": median_ms(finished - first for *_, first, finished in timed),
    }


def _medians(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the runs of a row."""
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def _receiver_times(receiver: Any) -> dict[str, float]:
    # The receiver stamps arrivals with the monotonic clock; the database with wall time.
    offset = time.time() - time.monotonic()
    return {r.event["data"]["job_id"]: r.at + offset for r in receiver.received()}


# The paced run's first seconds, when the worker has just started: reported apart, since
# the half-load latency is a steady-state figure and a start's first jobs pay for what a warm
# worker has.
START_S = 2.0


def _percentile(values: list[float], q: float) -> float:
    return values[max(0, int(len(values) * q) - 1)]


def run_paced(
    rate: float,
    seconds: float,
    gateway: Gateway,
    env: dict[str, str],
    conn: psycopg.Connection[Any],
    secret: str,
    *,
    results: bool = False,
    processes: int = 1,
) -> dict[str, float]:
    """Jobs at a steady ``rate``, every fourth with a webhook, to ``processes`` workers
    just started (32 threads in all): the latency percentiles over ``seconds`` after their
    first ``START_S``, and over those."""
    from service.webhooks.signing import tenant_secret
    from service.webhooks.testing import Receiver

    queue = env["EZQ_QUEUE"]
    tenant = f"paced-{secrets.token_hex(4)}"
    app = _producer(queue)
    starting = int(rate * START_S)
    jobs = starting + max(int(rate * seconds), 20)
    sent: dict[str, tuple[int, float]] = {}
    sending: list[float] = []  # how long the producer's send_task took, per steady job
    # The tenant's jobs are signed with the tenant's own secret (WEBHOOK_SECRET signed them
    # before it had one: both verify, so code of either kind can be measured).
    signers = [tenant_secret(secret, tenant), secret]
    with Receiver(signers) as receiver, worker_running(env, 32, processes) as workers:
        gateway.latency(0, 1)
        callback = receiver.url("/hook")

        def workers_cpu() -> float:
            return sum(cpu_seconds(w.proc.pid) for w in workers)

        # What the worker and the machine spent over the steady jobs: the latency of a
        # process near its core's limit is its queue's, not its path's.
        load_from = (0.0, 0.0, (0, 0))
        begin = time.perf_counter()
        for i in range(jobs):
            pause = begin + i / rate - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            if i == starting:
                load_from = (time.perf_counter(), workers_cpu(), machine_ticks())
            at = time.time()
            # A webhook delivery is a task of its own: on every job it would add load.
            extra = {"callback_url": callback} if i % 4 == 0 else {}
            sent[_send(app, queue, tenant, f"paced job {i}", results=results, **extra)] = (i, at)
            if i >= starting:
                sending.append((time.time() - at) * 1e3)
        load_to = (time.perf_counter(), workers_cpu(), machine_ticks())
        _wait_done(conn, tenant, jobs, lambda: None, timeout=300)
        receiver.wait_for(len(range(0, jobs, 4)), "/hook", timeout=120)
        hooks = _receiver_times(receiver)
    first_byte = gateway.received_at()
    # started_at is the claim's transaction's start on the server: it splits the wait
    # into the broker and the worker's hand-over before it, the claim and the gateway
    # request after it.
    times = {
        job: (started, finished)
        for job, started, finished in conn.execute(
            "SELECT id::text, extract(epoch FROM started_at)::float8,"
            " extract(epoch FROM finished_at)::float8 FROM jobs WHERE tenant = %s",
            (tenant,),
        ).fetchall()
    }
    finished = {job: f for job, (_, f) in times.items()}
    steady = sent.items()
    to_gateway = sorted((first_byte[j] - t) * 1e3 for j, (i, t) in steady if i >= starting)
    to_claim = sorted((times[j][0] - t) * 1e3 for j, (i, t) in steady if i >= starting)
    claim_to_gateway = sorted(
        (first_byte[j] - times[j][0]) * 1e3 for j, (i, _) in steady if i >= starting
    )
    at_start = sorted((first_byte[j] - t) * 1e3 for j, (i, t) in steady if i < starting)
    to_hook = sorted(
        (hooks[j] - finished[j]) * 1e3 for j, (i, _) in steady if i >= starting and j in hooks
    )
    window_s = load_to[0] - load_from[0]
    busy, total = (to - since for to, since in zip(load_to[2], load_from[2], strict=True))
    return {
        "rate": rate,
        "jobs": jobs - starting,
        "worker_cores": (load_to[1] - load_from[1]) / window_s,
        "worker_cpu_ms": (load_to[1] - load_from[1]) * 1e3 / (jobs - starting),
        "machine_busy": busy / total if total else 0.0,
        "first_byte_p50": statistics.median(to_gateway),
        "first_byte_p99": _percentile(to_gateway, 0.99),
        "to_claim_p50": statistics.median(to_claim),
        "to_claim_p99": _percentile(to_claim, 0.99),
        "send_task_p50": statistics.median(sending),
        "send_task_p99": _percentile(sorted(sending), 0.99),
        "claim_to_first_byte_p50": statistics.median(claim_to_gateway),
        "claim_to_first_byte_p99": _percentile(claim_to_gateway, 0.99),
        "webhook_p50": statistics.median(to_hook),
        "start_jobs": starting,
        "start_p50": statistics.median(at_start) if at_start else 0.0,
        "start_p99": _percentile(at_start, 0.99) if at_start else 0.0,
    }


def _workers(processes: int) -> str:
    return "the worker" if processes == 1 else f"the {processes} workers"


def _print_bounds(
    rows: list[Row],
    paced: dict[str, float] | None,
    processes: int,
    *,
    paced_fixed: bool,
    steady: bool,
) -> None:
    """Issue 7's bounds this run measured, each with ``met`` or ``NOT met`` (one worker)."""
    if processes != 1:
        return
    measured = [
        bounds.Measured(
            r.latency,
            r.concurrency,
            r.raw,
            r.ezq,
            statistics.median(r.ratios),
            statistics.median(r.cpu_ratios),
        )
        for r in rows
    ]
    found = bounds.lines(measured, paced, steady=steady, half_of_saturation=not paced_fixed)
    if found:
        print("issue 7's bounds, as this run measured them:")
        for line in found:
            print(f"  {line}")


def _print(
    rows: list[Row],
    paced: dict[str, float] | None,
    words: int | None,
    processes: int = 1,
    paced_fixed: bool = False,
    steady: bool = False,
    pinned: int | None = None,
    beside: str | None = None,
) -> None:
    reply = f"{words}-word replies" if words is not None else "short echo replies"
    who = "One ezq worker process" if processes == 1 else f"{processes} ezq worker processes"
    print(f"\n{who} vs the raw openai client, {reply}, same run")
    if pinned is not None:
        print(f"pinned: the (first) worker and the raw client to CPU {pinned}")
    else:
        print("not pinned: the worker and the raw client may run on any CPU")
    if beside is not None:
        print(beside)
    if steady:
        print(
            "rows with a latency: jobs sent at C/L, throughput = jobs ended per second from"
            f" latency + {STEADY_SETTLE_S:g} s after the first send to the last send"
        )
    head = (
        f"{'latency':>8}{'in flight':>10}{'jobs':>6} |{'raw/s':>8}{'cpu ms':>8}"
        f"{'gw ms':>7} |{'ezq/s':>8}{'ratio':>7}{'ideal':>7}{'worker':>8}{'pg':>6}"
        f"{'redis':>7}{'gw ms':>7}{'rss MB':>8}{'conns':>6}{'opened':>7}{'failed':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        ideal = f"{r.ezq['per_s'] / r.ideal:>7.2f}" if r.ideal else f"{'-':>7}"
        print(
            f"{r.latency * 1e3:>6.0f}ms{r.concurrency:>10}{r.jobs:>6} |"
            f"{r.raw['per_s']:>8.0f}{r.raw['cpu_ms']:>8.2f}{r.raw['gateway_cpu_ms']:>7.2f} |"
            f"{r.ezq['per_s']:>8.0f}{statistics.median(r.ratios):>7.2f}{ideal}"
            f"{r.ezq['worker_cpu_ms']:>8.2f}{r.ezq['pg_cpu_ms']:>6.2f}"
            f"{r.ezq['redis_cpu_ms']:>7.2f}{r.ezq['gateway_cpu_ms']:>7.2f}"
            f"{r.ezq['rss_mb']:>8.0f}{r.ezq['pg_connections']:>6.0f}{r.ezq['pg_opened']:>7.0f}"
            f"{int(r.ezq['failed'] + r.raw['failed']):>7}"
        )
    print(
        "cpu ms = CPU per call/job: raw client | ezq worker, its Postgres backends, Redis;"
        " gw ms = the fake gateway's; ideal = ezq/s over C/L;"
        " conns = the worker's most Postgres connections, opened = those it opened during"
        " the run"
    )
    for r in rows:
        if "wait_ms" in r.ezq:
            print(
                f"  {r.latency * 1e3:.0f} ms / {r.concurrency} steady, a job's time beyond the"
                f" gateway's latency (medians): send -> claim {r.ezq['wait_ms']:.0f} ms,"
                f" claim -> gateway receipt {r.ezq['claim_ms']:.0f} ms, gateway"
                f" {r.ezq['gateway_ms']:.0f} ms, first token -> final commit"
                f" {r.ezq['record_ms']:.0f} ms"
            )
    for r in rows:
        if r.raw_async:
            print(
                f"  {r.latency * 1e3:.0f} ms / {r.concurrency}: the SDK's async client on one"
                f" event loop {r.raw_async['per_s']:.0f} calls/s,"
                f" {r.raw_async['cpu_ms']:.2f} ms CPU per call (last run)"
            )
    if any(len(r.ratios) > 1 for r in rows):
        print("medians over alternating raw/ezq runs; each run's ratio:")
        for r in rows:
            each = ", ".join(f"{ratio:.2f}" for ratio in r.ratios)
            print(f"  {r.latency * 1e3:.0f} ms / {r.concurrency}: {each}")
    if paced:
        print(
            f"at {paced['rate']:.0f} jobs/s ({paced['jobs']:.0f} jobs,"
            f" {'a fixed rate' if paced_fixed else 'half of 0 ms saturation'}):"
            f" enqueue -> first gateway byte p50 {paced['first_byte_p50']:.1f} ms,"
            f" p99 {paced['first_byte_p99']:.1f} ms; final commit -> webhook received p50"
            f" {paced['webhook_p50']:.1f} ms"
        )
        print(
            f"  enqueue -> the claim's transaction p50 {paced['to_claim_p50']:.1f} ms,"
            f" p99 {paced['to_claim_p99']:.1f} ms (the producer's own send_task call p50"
            f" {paced['send_task_p50']:.1f} ms, p99 {paced['send_task_p99']:.1f} ms), then"
            f" -> first gateway byte p50 {paced['claim_to_first_byte_p50']:.1f} ms,"
            f" p99 {paced['claim_to_first_byte_p99']:.1f} ms"
        )
        print(
            f"  while they were sent {_workers(processes)} used"
            f" {paced['worker_cores']:.2f} of a core"
            f" ({paced['worker_cpu_ms']:.2f} ms of CPU a job, a quarter of them with a webhook"
            f" to deliver) and the machine's {os.cpu_count()} cores were"
            f" {paced['machine_busy']:.0%} busy"
        )
        print(
            f"  (the {paced['start_jobs']:.0f} jobs of the first {START_S:g} s after the start,"
            f" before them: enqueue -> first gateway byte p50 {paced['start_p50']:.1f} ms,"
            f" p99 {paced['start_p99']:.1f} ms)"
        )
    _print_bounds(rows, paced, processes, paced_fixed=paced_fixed, steady=steady)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="small N, under a minute")
    parser.add_argument("--row", action="append", help="LATENCY_S:IN_FLIGHT:JOBS (repeatable)")
    parser.add_argument(
        "--words", type=int, default=None, help="reply length in words (default: a short echo)"
    )
    parser.add_argument(
        "--pool",
        default="threads",
        help="the worker's pool: threads (ezq worker, the default) or gevent (a trial)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sharing a row's calls in flight, and the paced run's 32"
        " threads (default 1); worker CPU is their sum, RSS the largest",
    )
    parser.add_argument(
        "--cpu",
        default="none",
        help="pin the worker (ezq worker --cpu) and the raw client to this CPU ('last': the"
        " last one this process may use); with --workers, the next workers go to the CPUs"
        " below it. Default 'none': neither is pinned, as the issue's table was measured",
    )
    parser.add_argument(
        "--neighbours",
        default=None,
        help="N:DUTY: run everything beside N processes each keeping a CPU busy DUTY of every"
        " 10 ms at a higher priority (nice -10, when this user may set it), the machine's"
        " other tenants in a busy hour, on demand (benchmarks.neighbours). Default: none",
    )
    parser.add_argument(
        "--paced", type=float, default=None, help="seconds of the half-saturation run (0: none)"
    )
    parser.add_argument(
        "--paced-rate",
        type=float,
        default=None,
        help="jobs/s of the paced run (default: half of the 0 ms row's throughput); a fixed"
        " rate compares two versions of the code at the same load",
    )
    parser.add_argument(
        "--results",
        action="store_true",
        help="send as a producer that waits for results (Celery's default): each message"
        " runs its own job only (the default sends with ignore_result, as a fire-and-forget"
        " producer does)",
    )
    parser.add_argument(
        "--raw-async",
        action="store_true",
        help="also run each row's calls with the SDK's async client on one event loop (the"
        " other way it offers to hold many calls in one process), printed under the table",
    )
    parser.add_argument(
        "--steady",
        action="store_true",
        help="send each row with a latency at its C/L rate instead of all at once, and count"
        " jobs ended per second once the flow has settled (from latency + 2 s after the first"
        " send to the last send): the throughput of a steady offered load, raw and ezq alike."
        " All at once, every call starts and ends in step with the others (waves)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs of each row, raw and ezq alternating; the table shows each figure's median"
        " and the ratio's (this machine is shared: one run can be off by a third)",
    )
    args = parser.parse_args()
    pinned: int | None = None
    usable = sorted(os.sched_getaffinity(0))
    if args.cpu == "last":
        pinned = usable[-1]
    elif args.cpu != "none":
        if not args.cpu.isdigit() or int(args.cpu) not in usable:
            parser.error(
                f"--cpu {args.cpu}: not a CPU this process may use"
                f" ({', '.join(map(str, usable))}), 'last' nor 'none'"
            )
        pinned = int(args.cpu)
    try:
        neighbours = Neighbours.parse(args.neighbours) if args.neighbours else None
    except ValueError as exc:
        parser.error(str(exc))
    rows = [Row.parse(s) for s in (args.row or (SMOKE_ROWS if args.smoke else FULL_ROWS))]
    paced_s = args.paced if args.paced is not None else (3.0 if args.smoke else 15.0)
    for row in rows:
        rate = row.ideal if args.steady else None
        if rate and (row.jobs - 1) / rate <= row.settle_s:
            parser.error(
                f"--row {row.latency:g}:{row.concurrency}:{row.jobs} with --steady: its"
                f" {row.jobs} jobs take {row.jobs / rate:.1f} s at C/L, no longer than the"
                f" {row.settle_s:g} s left out while the flow settles; send at least"
                f" {int(rate * (row.settle_s + 10))} jobs"
            )

    from service.db.migrate import throwaway_database

    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    redis_pid = int(redis.Redis.from_url(BROKER).info("server")["process_id"])
    gateway = Gateway(args.words)
    beside: str | None = None
    try:
        with (
            contextlib.ExitStack() as stack,
            throwaway_database(ADMIN_DSN, prefix="ezq_bench_load") as url,
        ):
            if neighbours is not None:
                beside = describe(neighbours, stack.enter_context(running(neighbours)))
            env = {
                "DATABASE_URL": url,
                "CELERY_BROKER_URL": BROKER,
                "EZROUTER_BASE_URL": gateway.url,
                "EZROUTER_API_KEY": "sk-bench",
                "EZQ_QUEUE": f"ezq-load-{secrets.token_hex(4)}",
                "WEBHOOK_SECRET": secret,
                "WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
                "EZQ_BENCH_POOL": args.pool,
                "EZQ_BENCH_CPU": "" if pinned is None else str(pinned),
            }
            database = url.rsplit("/", 1)[1]
            with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
                backends = Backends(conn, database)
                for row in rows:
                    raws, ezqs = [], []
                    for _ in range(max(1, args.repeat)):
                        row.raw = run_raw(row, gateway, steady=args.steady, cpu=pinned)
                        if args.raw_async:
                            row.raw_async = run_raw(row, gateway, use_async=True, cpu=pinned)
                        run_ezq(
                            row,
                            gateway,
                            env,
                            conn,
                            backends,
                            redis_pid,
                            args.workers,
                            results=args.results,
                            steady=args.steady,
                        )
                        raws.append(row.raw)
                        ezqs.append(row.ezq)
                        row.ratios.append(row.ezq["per_s"] / row.raw["per_s"])
                        row.cpu_ratios.append(bounds.service_cpu_over_raw(row.raw, row.ezq))
                        print(
                            f"  {row.latency:g}s/{row.concurrency}: raw {row.raw['per_s']:.0f}/s,"
                            f" ezq {row.ezq['per_s']:.0f}/s",
                            flush=True,
                        )
                    row.raw, row.ezq = _medians(raws), _medians(ezqs)
                    row.ezq["rss_mb"] = max(run["rss_mb"] for run in ezqs)  # a peak
                paced = None
                saturated = next((r for r in rows if r.latency == 0), None)
                rate = args.paced_rate
                if rate is None and saturated is not None:
                    rate = saturated.ezq["per_s"] / 2
                if paced_s > 0 and rate is not None:
                    paced = run_paced(
                        rate,
                        paced_s,
                        gateway,
                        env,
                        conn,
                        secret,
                        results=args.results,
                        processes=args.workers,
                    )
    finally:
        gateway.stop()
    _print(
        rows,
        paced,
        args.words,
        args.workers,
        paced_fixed=args.paced_rate is not None,
        steady=args.steady,
        pinned=pinned,
        beside=beside,
    )


if __name__ == "__main__":
    main()

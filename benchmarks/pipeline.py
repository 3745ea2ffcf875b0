"""Jobs per second through the whole per-job path: claim, gateway call, assembly, commit.

Runs a real worker against the fake gateway (with realistic latency per call) in a
throwaway database, and compares the default threads pool against prefork with one
process per core, the baseline it replaces.

    python -m benchmarks.pipeline [--jobs 300] [--latency 0.3] [--words 300]
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from service.fake_gateway import FakeGateway, Fault

ADMIN_DSN = os.environ.get("EZQ_BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
MODEL = "deepseek-v4-flash"


def run(
    pool: list[str], *, jobs: int, env: dict[str, str], gateway: FakeGateway, latency: float
) -> dict[str, float]:
    from service.config import get_settings
    from service.db.session import dispose_engines
    from service.producer import enqueue_completion

    queue = f"ezq-bench-{secrets.token_hex(4)}"
    env = {**env, "EZQ_QUEUE": queue}
    os.environ.update(env)
    get_settings.cache_clear()
    dispose_engines()
    log = Path(tempfile.mkdtemp()) / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "service", "worker", *pool, "--loglevel", "WARNING"],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            time.sleep(4)
            gateway.reset()
            gateway.add_faults(Fault(kind="normal", latency=latency, times=jobs))
            start = time.perf_counter()
            ids = [
                enqueue_completion(MODEL, [{"role": "user", "content": f"job {i}"}])
                for i in range(jobs)
            ]
            enqueued = time.perf_counter() - start
            with psycopg.connect(env["DATABASE_URL"].replace("+psycopg", "")) as conn:
                while True:
                    (done,) = conn.execute(
                        "SELECT count(*) FROM jobs WHERE id = ANY(%s) AND status IN ('succeeded','failed')",
                        (ids,),
                    ).fetchone()
                    if done == jobs:
                        break
                    time.sleep(0.05)
                elapsed = time.perf_counter() - start
                latencies = [
                    r[0]
                    for r in conn.execute(
                        "SELECT extract(epoch FROM finished_at - created_at) FROM jobs WHERE id = ANY(%s)",
                        (ids,),
                    ).fetchall()
                ]
                (failed,) = conn.execute(
                    "SELECT count(*) FROM jobs WHERE id = ANY(%s) AND status <> 'succeeded'", (ids,)
                ).fetchone()
        finally:
            worker.terminate()
            worker.wait(timeout=60)
    latencies.sort()
    return {
        "jobs/s": jobs / elapsed,
        "enqueue ms/job": enqueued / jobs * 1e3,
        "p50 s": float(statistics.median(latencies)),
        "p95 s": float(latencies[int(len(latencies) * 0.95) - 1]),
        "failed": float(failed),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--latency", type=float, default=0.3, help="gateway seconds to first byte")
    parser.add_argument("--words", type=int, default=300, help="reply length in words")
    args = parser.parse_args()

    from service.db.migrate import throwaway_database

    with (
        throwaway_database(ADMIN_DSN, prefix="ezq_bench_pipeline") as url,
        FakeGateway(reply_words=args.words).start() as gateway,
    ):
        env = {
            "DATABASE_URL": url,
            "EZROUTER_BASE_URL": gateway.url,
            "EZROUTER_API_KEY": "sk-bench",
            "EZQ_LOG_LEVEL": "WARNING",
        }
        cores = str(os.cpu_count() or 2)
        results = {
            f"prefork, {cores} processes (baseline)": run(
                ["--pool", "prefork", "--concurrency", cores],
                jobs=args.jobs,
                env=env,
                gateway=gateway,
                latency=args.latency,
            ),
            "threads, 32 (default)": run(
                [], jobs=args.jobs, env=env, gateway=gateway, latency=args.latency
            ),
        }

    print(f"\n{args.jobs} jobs, gateway latency {args.latency}s, {args.words}-word replies")
    print(f"  {'pool':<34}{'jobs/s':>9}{'p50 s':>9}{'p95 s':>9}{'enqueue':>12}{'failed':>8}")
    for name_, r in results.items():
        print(
            f"  {name_:<34}{r['jobs/s']:>9.1f}{r['p50 s']:>9.2f}{r['p95 s']:>9.2f}"
            f"{r['enqueue ms/job']:>9.2f} ms{int(r['failed']):>8}"
        )
    base, ours = list(results.values())
    print(f"  threads / prefork throughput: {ours['jobs/s'] / base['jobs/s']:.1f}x")


if __name__ == "__main__":
    main()

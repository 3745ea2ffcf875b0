"""What flow control costs per job: the claim's admission step and the release step, side
by side in one run against the same database.

Three runs of the per-job database path (``benchmarks.job_path``'s in-memory gateway), each
with a backlog of pending jobs of another tenant waiting at a lower priority (so every
claim ranks a real backlog):

- ``baseline``: the claim takes the message's own job (admission and release bypassed);
- ``no limits``: flow control on, nothing configured (ranking, reservation, settle, wake);
- ``limits+budget``: a tenant x model limit (concurrency, requests and tokens per window)
  and a tenant budget on a priced model, all checked and reserved at every claim.

    python -m benchmarks.flow_admission [--jobs 300] [--backlog 2000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

from sqlalchemy import event

from benchmarks.job_path import ADMIN_DSN, InstantGateway


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--backlog", type=int, default=2000)
    args = parser.parse_args()

    from service.db.migrate import throwaway_database

    with throwaway_database(ADMIN_DSN, prefix="ezq_bench_flow") as url:
        os.environ.update(DATABASE_URL=url, EZROUTER_API_KEY="sk-bench")
        measure(args.jobs, args.backlog)


def _enqueue(n: int, *, tenant: str, priority: int) -> list[uuid.UUID]:
    from service.db import queries
    from service.db.session import transaction
    from service.validation import validate_request

    ids = []
    with transaction() as session:
        for i in range(n):
            request = validate_request(
                model="glm-5.1",
                messages=[{"role": "user", "content": f"{tenant} job {i}"}],
                tenant=tenant,
                priority=priority,
                params={"max_tokens": 400},
            )
            ids.append(queries.create_job(session, request)[0])
    return ids


@contextmanager
def _bypassed() -> Iterator[None]:
    """The claim as it was without flow control: admit the message's own job, release
    nothing."""
    from service.db.flow import Ranking
    from service.flow import admission
    from service.worker import runner

    rank, release = admission.rank, runner.release
    # Nothing ranked: the message's own job is claimed, alone.
    admission.rank = lambda *_, **__: Ranking(None, [], False, False)  # type: ignore[assignment]
    runner.release = lambda *args: None  # type: ignore[assignment]
    try:
        yield
    finally:
        admission.rank, runner.release = rank, release  # type: ignore[assignment]


def _configure_limits() -> None:
    from service.db import flow as flow_db
    from service.db.session import transaction
    from service.usage.prices import PriceInput, add_price

    with transaction() as session:
        flow_db.set_limit(
            session,
            tenant="bench",
            model="glm-5.1",
            max_concurrent=1000,
            requests_per_window=1_000_000,
            tokens_per_window=1_000_000_000,
            adaptive_ttft_ms=None,
        )
        flow_db.set_budget(session, tenant="bench", model="*", monthly_usd=Decimal(1_000_000))
        add_price(session, PriceInput("glm-5.1", Decimal(1), Decimal("0.1"), Decimal(2)))


def _run(name: str, jobs: int, counter: Callable[[], int]) -> tuple[float, float]:
    from service.config import get_settings
    from service.worker.runner import run_job

    settings = get_settings()
    gateway = InstantGateway()
    ids = _enqueue(jobs + 30, tenant="bench", priority=5)
    for job_id in ids[:30]:  # warm up pools and statement caches
        run_job(job_id, gateway=gateway, settings=settings, publish=lambda _: None)
    before = counter()
    times = []
    for job_id in ids[30:]:
        start = time.perf_counter()
        run_job(job_id, gateway=gateway, settings=settings, publish=lambda _: None)
        times.append(time.perf_counter() - start)
    median = statistics.median(times) * 1e3
    p95 = sorted(times)[int(len(times) * 0.95)] * 1e3
    per_job = (counter() - before) / jobs
    print(f"  {name:<14} median {median:6.2f} ms   p95 {p95:6.2f} ms   {per_job:5.1f} SQL/job")
    return median, per_job


def measure(jobs: int, backlog: int) -> None:
    from service.db.session import dispose_engines, get_engine

    statements = 0

    def count(*_: Any) -> None:
        nonlocal statements
        statements += 1

    event.listen(get_engine(), "before_cursor_execute", count)
    _enqueue(backlog, tenant="backlog", priority=0)
    print(f"\nFlow control per job, {jobs} jobs, {backlog} lower-priority jobs waiting")
    with _bypassed():
        base, _ = _run("baseline", jobs, lambda: statements)
    plain, _ = _run("no limits", jobs, lambda: statements)
    _configure_limits()
    limited, _ = _run("limits+budget", jobs, lambda: statements)
    print(
        f"  cost per job: +{plain - base:.2f} ms with none configured ({plain / base:.2f}x),"
        f" +{limited - base:.2f} ms with a limit and a budget ({limited / base:.2f}x)"
    )
    dispose_engines()


if __name__ == "__main__":
    main()

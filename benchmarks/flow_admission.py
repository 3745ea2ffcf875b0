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
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

from benchmarks.job_path import ADMIN_DSN, InstantGateway
from benchmarks.statements import Counts, count_statements


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
    """The claim as it would be without flow control: the message's own job claimed by the
    claim function alone, on an autocommit connection; nothing released."""
    from service.config import Settings
    from service.db import attempts
    from service.db.session import autocommit
    from service.flow.admission import Admission
    from service.worker import runner

    def claim_alone(
        job_id: uuid.UUID,
        settings: Settings,
        *,
        own_only: bool,
        holder: str | None,
        first: Any = None,
    ) -> tuple[Admission, attempts.ClaimOutcome]:
        assert first is None, "the benchmark's jobs are queued before they run"
        with autocommit() as conn:
            claim = attempts.claim_job(
                conn, job_id, lease_seconds=settings.lease_seconds, holder=holder
            )
        return Admission(job_id, job_id), claim

    claim, release = runner._claim, runner.release
    runner._claim = claim_alone  # type: ignore[assignment]
    runner.release = lambda *args: None  # type: ignore[assignment]
    try:
        yield
    finally:
        runner._claim, runner.release = claim, release  # type: ignore[assignment]


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


def _run(name: str, jobs: int, counts: Counts) -> tuple[float, float]:
    from service.config import get_settings
    from service.worker.runner import run_job

    settings = get_settings()
    gateway = InstantGateway()
    ids = _enqueue(jobs + 30, tenant="bench", priority=5)
    for job_id in ids[:30]:  # warm up pools and statement caches
        run_job(job_id, gateway=gateway, settings=settings, publish=lambda _: None)
    statements, transactions = counts.statements, counts.transactions
    times = []
    for job_id in ids[30:]:
        start = time.perf_counter()
        run_job(job_id, gateway=gateway, settings=settings, publish=lambda _: None)
        times.append(time.perf_counter() - start)
    median = statistics.median(times) * 1e3
    p95 = sorted(times)[int(len(times) * 0.95)] * 1e3
    per_job = (counts.statements - statements) / jobs
    tx = (counts.transactions - transactions) / jobs
    print(
        f"  {name:<14} median {median:6.2f} ms   p95 {p95:6.2f} ms   {per_job:5.1f} SQL/job"
        f"   {tx:4.1f} transactions/job"
    )
    return median, per_job


def measure(jobs: int, backlog: int) -> None:
    from service.db.session import dispose_engines, get_engine

    counts = count_statements(get_engine())
    _enqueue(backlog, tenant="backlog", priority=0)
    print(f"\nFlow control per job, {jobs} jobs, {backlog} lower-priority jobs waiting")
    with _bypassed():
        base, _ = _run("baseline", jobs, counts)
    plain, _ = _run("no limits", jobs, counts)
    _configure_limits()
    limited, _ = _run("limits+budget", jobs, counts)
    print(
        f"  cost per job: +{plain - base:.2f} ms with none configured ({plain / base:.2f}x),"
        f" +{limited - base:.2f} ms with a limit and a budget ({limited / base:.2f}x)"
    )
    dispose_engines()


if __name__ == "__main__":
    main()

"""Throttled jobs are woken when their hold can lift: a rate-limited job at its
``throttled_until`` (not at the next sweep), a job held by its scope's concurrency when a
call of that scope ends (not only the best jobs of every tenant), and in the order of the
ranking, priority after aging then enqueue order (so an aged job is not starved)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import WorkerProcess, run_ezq, sql, wait_for_job
from tests.flow_support import enqueue_many, new_tenant, slow

# The sweep cannot be what publishes a throttled job in these tests: it is off in their
# workers, and they run on a database of their own (the session's worker, which sweeps its
# database every second, would publish due jobs onto its own queue and run them).
NO_SWEEP = {"EZQ_SWEEP_INTERVAL": "0"}


@pytest.fixture
def worker_factory(
    own_database_settings: tuple[str, Any], worker_factory: Callable[..., WorkerProcess]
) -> Callable[..., WorkerProcess]:
    """The suite's ``worker_factory``, its workers (and this process) on the test's own
    database (set up first, so that it is dropped after the workers have stopped)."""
    url, _ = own_database_settings

    def start(*, env: dict[str, str] | None = None, args: list[str] | None = None) -> WorkerProcess:
        return worker_factory(env={"DATABASE_URL": url, **(env or {})}, args=args)

    return start


@pytest.fixture
def limits() -> Iterator[Callable[..., None]]:
    """Set limits of the test's tenants; deleted afterwards."""
    tenants: list[str] = []

    def set_limit(tenant: str, *args: str) -> None:
        out = run_ezq("limits", "set", "--tenant", tenant, *args)
        assert out.returncode == 0, out.stderr
        tenants.append(tenant)

    yield set_limit
    for tenant in tenants:
        run_ezq("limits", "delete", "--tenant", tenant)


def _times(job_ids: list[Any]) -> list[tuple[float, float, float | None]]:
    """(started, finished, admitted) of each job, as epoch seconds, by start."""
    rows = sql(
        "SELECT extract(epoch FROM j.started_at), extract(epoch FROM j.finished_at),"
        " (SELECT extract(epoch FROM min(a.admitted_at)) FROM flow_admissions a"
        "  WHERE a.job_id = j.id)"
        " FROM jobs j WHERE j.id = ANY(:ids) ORDER BY j.started_at",
        ids=[str(j) for j in job_ids],
    )
    return [(float(s), float(f), None if a is None else float(a)) for s, f, a in rows]


def test_a_rate_limited_job_starts_when_the_window_frees_not_at_the_sweep(
    service_env: dict[str, str],
    worker_factory: Callable[..., WorkerProcess],
    fake_gateway: Any,
    own_queue: str,
    limits: Callable[..., None],
) -> None:
    """3 requests per window (the suite's 2 s), 8 jobs, no sweep: each job past the first 3
    starts within 2 s of the moment the window let it (the admission 3 calls before it,
    plus the window), though no call is running then to wake it. The window is the suite's
    (every worker on a database is one pool, and a worker counts the window its own setting
    says)."""
    tenant, marker = new_tenant(), f"due-{secrets.token_hex(4)}"
    limits(tenant, "--rpm", "3")
    slow(fake_gateway, marker, latency=0.1)
    window = float(service_env["EZQ_FLOW_WINDOW"])
    env = {"EZQ_QUEUE": own_queue, "EZQ_WORKER_CONCURRENCY": "2"}
    for _ in range(2):
        worker_factory(env={**env, **NO_SWEEP})
    jobs = enqueue_many(8, marker, tenant=tenant)
    for job_id in jobs:
        assert wait_for_job(job_id, timeout=20)["status"] == "succeeded"
    times = _times(jobs)
    admitted = sorted(a for _, _, a in times if a is not None)
    assert len(admitted) == 8
    for i in range(3, 8):
        allowed = admitted[i - 3] + window
        assert admitted[i] >= allowed - 0.05, (i, admitted)  # the limit held
        assert admitted[i] - allowed < 2.0, (i, admitted[i] - allowed, admitted)


def test_a_call_that_ends_wakes_its_own_scope_behind_another_tenants_higher_priority(
    worker_factory: Callable[..., WorkerProcess],
    fake_gateway: Any,
    own_queue: str,
    limits: Callable[..., None],
) -> None:
    """Two tenants at 2 calls each, 20 priority-9 jobs of one and 10 priority-1 jobs of the
    other: the low tenant's slots never stay free while its jobs wait, though the high
    tenant's throttled jobs rank first (a low call's end wakes a low job)."""
    high, low = new_tenant(), new_tenant()
    marker = f"scope-{secrets.token_hex(4)}"
    limits(high, "--concurrency", "2")
    limits(low, "--concurrency", "2")
    slow(fake_gateway, marker, latency=0.5)
    env = {"EZQ_QUEUE": own_queue, "EZQ_WORKER_CONCURRENCY": "4", **NO_SWEEP}
    for _ in range(2):
        worker_factory(env=env)
    highs = enqueue_many(20, marker + " high", tenant=high, priority=9)
    lows = enqueue_many(10, marker + " low", tenant=low, priority=1)
    for job_id in [*highs, *lows]:
        assert wait_for_job(job_id, timeout=30)["status"] == "succeeded"
    times = _times(lows)
    starts = [s for s, _, _ in times]
    ends = sorted(f for _, f, _ in times)
    # The k-th low job (k >= 2) may start once k - 1 low calls ended (2 slots): it waits
    # for a slot, then at most a wake-up and a claim.
    late = [
        (k, round(starts[k] - ends[k - 2], 2))
        for k in range(2, len(starts))
        if starts[k] - ends[k - 2] > 1.5
    ]
    assert not late, late


def test_an_aged_low_priority_job_goes_before_later_high_priority_ones(
    worker_factory: Callable[..., WorkerProcess],
    fake_gateway: Any,
    own_queue: str,
    limits: Callable[..., None],
) -> None:
    """One call at a time, aging one step per 0.4 s: 3 priority-0 jobs, then 30 priority-9
    ones. After 3.6 s the first ones rank 9 too and were enqueued first, so they run next,
    not after the whole priority-9 backlog (7.5 s of calls)."""
    tenant, marker = new_tenant(), f"aging-{secrets.token_hex(4)}"
    limits(tenant, "--concurrency", "1")
    slow(fake_gateway, marker, latency=0.25)
    env = {
        "EZQ_QUEUE": own_queue,
        "EZQ_WORKER_CONCURRENCY": "4",
        "EZQ_PRIORITY_AGING": "0.4",
        **NO_SWEEP,
    }
    worker_factory(env=env)
    lows = enqueue_many(3, marker + " low", tenant=tenant, priority=0)
    highs = enqueue_many(30, marker + " high", tenant=tenant, priority=9)
    for job_id in [*lows, *highs]:
        assert wait_for_job(job_id, timeout=30)["status"] == "succeeded"
    ((aged_at,),) = sql(
        "SELECT extract(epoch FROM max(created_at)) + 9 * 0.4 FROM jobs WHERE id = ANY(:ids)",
        ids=[str(j) for j in lows],
    )
    low_starts = [s for s, _, _ in _times(lows)]
    high_starts = [s for s, _, _ in _times(highs)]
    # After the low jobs ranked 9, only the calls under way then (and a claim racing a
    # wake-up) may start before them: never the rest of the backlog.
    before = [s for s in high_starts if float(aged_at) < s < max(low_starts)]
    assert len(before) <= 3, (len(before), len([s for s in high_starts if s > low_starts[-1]]))
    assert max(low_starts) < max(high_starts)

"""Priorities and fair shares are real: the worker claims the best-ranked job from Postgres,
whatever message woke it."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import WorkerProcess, run_ezq, sql, wait_for_job
from tests.flow_support import enqueue_many, new_tenant, slow, statuses, wait_until


def _started(job_ids: list[Any]) -> int:
    rows = sql(
        "SELECT count(*) FROM jobs WHERE id = ANY(:ids) AND started_at IS NOT NULL",
        ids=[str(j) for j in job_ids],
    )
    return int(rows[0][0])


def test_a_late_high_priority_job_overtakes_a_low_priority_backlog(
    worker_factory: Callable[..., WorkerProcess], fake_gateway: Any, own_queue: str
) -> None:
    """A priority-9 job enqueued (from the CLI) behind 40 priority-1 jobs starts at the next
    free thread: no low job enqueued before it starts between its enqueue and its start."""
    tenant, marker = new_tenant(), f"prio-{secrets.token_hex(4)}"
    slow(fake_gateway, marker, latency=0.3)
    worker_factory(env={"EZQ_QUEUE": own_queue, "EZQ_WORKER_CONCURRENCY": "2"})
    lows = enqueue_many(40, marker, tenant=tenant, priority=1)
    wait_until(lambda: _started(lows) >= 2, "the backlog running")
    out = run_ezq(
        "enqueue",
        "--model",
        "glm-5.1",
        "--tenant",
        tenant,
        "--priority",
        "9",
        f"{marker} urgent",
        env={"EZQ_QUEUE": own_queue},
    )
    assert out.returncode == 0, out.stderr
    high = out.stdout.strip()
    assert wait_for_job(high, timeout=30)["status"] == "succeeded"
    for job_id in lows:
        assert wait_for_job(job_id, timeout=60)["status"] == "succeeded"
    ((created, started),) = sql("SELECT created_at, started_at FROM jobs WHERE id = :id", id=high)
    rows = sql("SELECT started_at FROM jobs WHERE id = ANY(:ids)", ids=[str(j) for j in lows])
    # A claim that began before the high job was committed could not see it: 0.1 s grace.
    after_enqueue = [s for (s,) in rows if (s - created).total_seconds() > 0.1]
    assert len(after_enqueue) >= 8  # the high job did arrive while a backlog waited
    # A start time is its claim transaction's start, not the moment its ranking ran: the
    # other thread's claim may begin a moment before the one that takes the high job, then
    # find it taken (locked) and run its own low job. That one race is all there may be.
    overtaken = [s for s in after_enqueue if s < started]
    assert len(overtaken) <= 1, (started, sorted(after_enqueue))
    assert all((started - s).total_seconds() < 0.1 for s in overtaken), (started, overtaken)
    assert sql("SELECT priority FROM jobs WHERE id = :id", id=high) == [(9,)]


def test_a_small_tenants_job_finishes_within_a_bound_while_a_big_backlog_drains(
    worker_factory: Callable[..., WorkerProcess], fake_gateway: Any, own_queue: str
) -> None:
    """A tenant with one job waits at most a few job durations behind another tenant's 60:
    tenants with work waiting are served by fewest running calls first."""
    big, small = new_tenant(), new_tenant()
    marker = f"fair-{secrets.token_hex(4)}"
    slow(fake_gateway, marker, latency=0.4)
    worker_factory(env={"EZQ_QUEUE": own_queue, "EZQ_WORKER_CONCURRENCY": "4"})
    backlog = enqueue_many(60, marker, tenant=big)
    wait_until(lambda: _started(backlog) >= 4, "the big backlog running")
    (job,) = enqueue_many(1, marker + " small", tenant=small)
    assert wait_for_job(job, timeout=30)["status"] == "succeeded"
    # One call is 0.4 s: the job starts when one of the 4 running calls ends (the backlog
    # alone takes 6 s to drain). Measured on the database's clock, from its enqueue's
    # transaction to its claim's, not by this process's polling.
    ((waited,),) = sql(
        "SELECT extract(epoch FROM started_at - created_at) FROM jobs WHERE id = :id", id=job
    )
    assert float(waited) < 1.2, waited
    assert (
        sum(
            1
            for (s,) in sql(
                "SELECT status FROM jobs WHERE id = ANY(:ids)", ids=[str(j) for j in backlog]
            )
            if s == "queued"
        )
        >= 20
    )  # the big backlog was still draining
    for job_id in backlog:
        assert wait_for_job(job_id, timeout=90)["status"] == "succeeded"
    assert statuses(backlog) == {"succeeded": 60}


@pytest.mark.parametrize("big_has_a_tenant", [True, False], ids=["tenant", "no tenant"])
def test_tenants_take_turns_when_a_limit_lets_one_call_run(
    worker_factory: Callable[..., WorkerProcess],
    fake_gateway: Any,
    own_queue: str,
    big_has_a_tenant: bool,
) -> None:
    """With one call allowed in a scope, a small tenant's job runs next when the slot
    frees, not after the big backlog enqueued before it (a tenant's, or jobs without one):
    no tenant then has a call running, and the tenant served longest ago goes first."""
    model = "kimi-k2.6"  # the limit is on the model, for every tenant: no other test's
    big, small = (new_tenant() if big_has_a_tenant else None), new_tenant()
    marker = f"turns-{secrets.token_hex(4)}"
    slow(fake_gateway, marker, latency=0.3)
    assert run_ezq("limits", "set", "--model", model, "--concurrency", "1").returncode == 0
    try:
        worker_factory(env={"EZQ_QUEUE": own_queue, "EZQ_WORKER_CONCURRENCY": "4"})
        backlog = enqueue_many(12, marker, tenant=big, model=model)
        wait_until(lambda: _started(backlog) >= 1, "the big backlog running")
        (job,) = enqueue_many(1, marker + " small", tenant=small, model=model)
        assert wait_for_job(job, timeout=60)["status"] == "succeeded"
        ((overtaken,),) = sql(
            "SELECT count(*) FROM jobs b, jobs s WHERE s.id = :s AND b.id = ANY(:ids)"
            " AND b.started_at > s.created_at AND b.started_at < s.started_at",
            s=str(job),
            ids=[str(j) for j in backlog],
        )
        # At most the one whose claim was under way when the small job came.
        assert overtaken <= 1, f"{overtaken} of the big backlog started before it"
        for job_id in backlog:
            assert wait_for_job(job_id, timeout=60)["status"] == "succeeded"
    finally:
        assert run_ezq("limits", "delete", "--model", model).returncode == 0

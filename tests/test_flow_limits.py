"""Limits shared by every worker: the gateway never sees more than a limit allows, throttled
jobs wait queued with a reason and all succeed, and a change applies without a restart."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import WorkerProcess, run_ezq, sql, wait_for_job
from tests.flow_support import (
    MODEL,
    admission_lag,
    calls_of,
    enqueue_many,
    max_overlap,
    new_tenant,
    slow,
    statuses,
    wait_until,
)


def _throttled(job_ids: list[Any], reason: str) -> int:
    rows = sql(
        "SELECT count(*) FROM jobs WHERE id = ANY(:ids) AND status = 'queued'"
        " AND throttle_reason LIKE :reason AND needs_publish",
        ids=[str(j) for j in job_ids],
        reason=f"{reason}%",
    )
    return int(rows[0][0])


def test_concurrency_limit_holds_across_worker_processes(
    worker_factory: Callable[..., WorkerProcess], fake_gateway: Any, own_queue: str
) -> None:
    """Two worker processes of 8 threads each never have more than 2 calls of a tenant x model
    at the gateway; the rest wait queued with a reason, and every job succeeds."""
    tenant, marker = new_tenant(), f"conc-{secrets.token_hex(4)}"
    out = run_ezq("limits", "set", "--tenant", tenant, "--model", MODEL, "--concurrency", "2")
    assert out.returncode == 0, out.stderr
    slow(fake_gateway, marker, latency=0.4)
    for _ in range(2):
        worker_factory(env={"EZQ_QUEUE": own_queue})
    jobs = enqueue_many(12, marker, tenant=tenant)
    wait_until(lambda: _throttled(jobs, "max_concurrent") > 0, "a job throttled by the limit")
    for job_id in jobs:
        assert wait_for_job(job_id, timeout=60)["status"] == "succeeded"
    spans = calls_of(fake_gateway, marker)
    assert len(spans) == 12
    assert max_overlap(spans) == 2
    assert sql(
        "SELECT count(*) FROM jobs WHERE id = ANY(:ids) AND throttle_reason IS NOT NULL",
        ids=[str(j) for j in jobs],
    ) == [(0,)]


def test_request_rate_limit_holds_and_throttled_jobs_wait_until_the_window_frees(
    worker_factory: Callable[..., WorkerProcess], fake_gateway: Any, own_queue: str
) -> None:
    """With 3 requests per 2 s window, no 2 s span of the gateway's arrivals holds more than
    3 calls; a throttled job shows when it may start, and all succeed."""
    tenant, marker = new_tenant(), f"rpm-{secrets.token_hex(4)}"
    assert run_ezq("limits", "set", "--tenant", tenant, "--rpm", "3").returncode == 0
    env = {"EZQ_QUEUE": own_queue, "EZQ_FLOW_WINDOW": "2"}
    for _ in range(2):
        worker_factory(env=env)
    jobs = enqueue_many(8, marker, tenant=tenant)
    wait_until(
        lambda: (
            sql(
                "SELECT count(*) FROM jobs WHERE id = ANY(:ids) AND throttled_until > now()"
                " AND throttle_reason LIKE 'requests 3/3%'",
                ids=[str(j) for j in jobs],
            )
            != [(0,)]
        ),
        "a job throttled until the window frees",
    )
    for job_id in jobs:
        assert wait_for_job(job_id, timeout=60)["status"] == "succeeded"
    arrivals = sorted(start for start, _ in calls_of(fake_gateway, marker))
    assert len(arrivals) == 8
    # A window is counted from each call's admission; the gateway sees the call a moment
    # later (the claim commits, then the request is sent), by at most ``lag``.
    lag = admission_lag(fake_gateway, marker, jobs)
    assert lag < 1.0
    for i, start in enumerate(arrivals):
        assert sum(1 for a in arrivals[i:] if a < start + 2.0 - lag) <= 3, (arrivals, lag)


def test_token_rate_limit_reserves_an_estimate_and_settles_to_usage(
    worker_factory: Callable[..., WorkerProcess], fake_gateway: Any, own_queue: str
) -> None:
    """A tokens-per-window limit never lets the gateway see more tokens in a window than it
    allows: each call reserves its prompt estimate plus max_tokens, settled to real usage."""
    tenant, marker = new_tenant(), f"tpm-{secrets.token_hex(4)}"
    # About 40 reserved per call (prompt estimate + max_tokens 20): two calls per window.
    assert run_ezq("limits", "set", "--tenant", tenant, "--tpm", "90").returncode == 0
    worker_factory(env={"EZQ_QUEUE": own_queue, "EZQ_FLOW_WINDOW": "2"})
    jobs = enqueue_many(6, marker, tenant=tenant, params={"max_tokens": 20})
    for job_id in jobs:
        assert wait_for_job(job_id, timeout=60)["status"] == "succeeded"
    used = dict(
        sql(
            "SELECT job_id::text, total_tokens FROM token_usage WHERE job_id = ANY(:ids)",
            ids=[str(j) for j in jobs],
        )
    )
    assert len(used) == 6

    def settled() -> list[tuple[Any, ...]]:
        return sql(
            "SELECT job_id::text, tokens_reserved, tokens_used FROM flow_admissions"
            " WHERE job_id = ANY(:ids) AND settled_at IS NOT NULL",
            ids=[str(j) for j in jobs],
        )

    wait_until(lambda: len(settled()) == 6, "every call settled")
    for job_id, reserved, real in settled():
        assert real == used[job_id] and reserved >= real
    arrivals = sorted(
        (r.received_at, r.body) for r in fake_gateway.requests if marker in str(r.body)
    )
    times = [a for a, _ in arrivals]
    tokens = [used[str(j)] for j in jobs]  # every call of this test uses the same
    assert len(set(tokens)) == 1
    lag = admission_lag(fake_gateway, marker, jobs)
    assert lag < 1.0
    for i, start in enumerate(times):
        in_window = sum(1 for a in times[i:] if a < start + 2.0 - lag)
        assert in_window * tokens[0] <= 90, (times, tokens)


def test_changing_a_limit_applies_without_a_restart(
    worker_factory: Callable[..., WorkerProcess], fake_gateway: Any, own_queue: str
) -> None:
    """A backlog held to one call at a time runs four at a time once the limit is raised,
    with the same worker process."""
    tenant, marker = new_tenant(), f"change-{secrets.token_hex(4)}"
    assert run_ezq("limits", "set", "--tenant", tenant, "--concurrency", "1").returncode == 0
    slow(fake_gateway, marker, latency=0.5)
    worker_factory(env={"EZQ_QUEUE": own_queue})
    jobs = enqueue_many(20, marker, tenant=tenant)
    wait_until(lambda: len(calls_of(fake_gateway, marker)) >= 2, "two calls one at a time")
    assert max_overlap(calls_of(fake_gateway, marker)) == 1
    assert run_ezq("limits", "set", "--tenant", tenant, "--concurrency", "4").returncode == 0
    out = run_ezq("limits", "list", "--format", "json")
    assert any(r["tenant"] == tenant and r["max_concurrent"] == 4 for r in json.loads(out.stdout))
    for job_id in jobs:
        assert wait_for_job(job_id, timeout=60)["status"] == "succeeded"
    assert max_overlap(calls_of(fake_gateway, marker)) == 4
    assert statuses(jobs) == {"succeeded": 20}


def test_an_adaptive_limit_backs_off_when_the_first_token_is_slow(
    worker_factory: Callable[..., WorkerProcess], fake_gateway: Any, own_queue: str
) -> None:
    """With a 50 ms time-to-first-token target and first tokens 0.3 s late, the adaptive
    concurrency falls from its ceiling of 4 to 1, as `ezq limits list` shows."""
    tenant, marker = new_tenant(), f"aimd-{secrets.token_hex(4)}"
    out = run_ezq(
        "limits", "set", "--tenant", tenant, "--concurrency", "4", "--adaptive-ttft-ms", "50"
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["current_concurrency"] == 4
    slow(fake_gateway, marker, latency=0.3)
    worker_factory(env={"EZQ_QUEUE": own_queue})
    jobs = enqueue_many(8, marker, tenant=tenant)
    for job_id in jobs:
        assert wait_for_job(job_id, timeout=60)["status"] == "succeeded"

    def current() -> Any:
        listed = json.loads(run_ezq("limits", "list", "--format", "json").stdout)
        return next(r["current_concurrency"] for r in listed if r["tenant"] == tenant)

    wait_until(lambda: current() == 1, "the adaptive limit down to 1")
    assert max_overlap(calls_of(fake_gateway, marker)) <= 4


@pytest.mark.usefixtures("service_env")
@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--model", MODEL], "--concurrency: give at least one of --concurrency, --rpm, --tpm"),
        (
            ["--model", MODEL, "--adaptive-ttft-ms", "900"],
            "--adaptive-ttft-ms: needs --concurrency (the adaptive ceiling)",
        ),
        (["--model", MODEL, "--rpm", "0"], "--rpm: must be an integer from 1 to 2147483647, not 0"),
        (["--concurrency", "2"], "--tenant: a limit needs a tenant, a model, or both"),
    ],
)
def test_a_limit_set_wrong_names_the_flags_typed(args: list[str], error: str) -> None:
    """The command line's errors name its own flags, never the HTTP body's fields."""
    done = run_ezq("limits", "set", *args)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [f"ezq: error: {error}"]

"""Flow control with nothing configured costs no bookkeeping, and budgets count the whole
month's spend: calls made before a budget existed count against it.

Runs on a database of its own: whether any limit or budget exists is database-wide, and
other tests configure some."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

from tests.conftest import WorkerProcess, run_ezq
from tests.flow_support import price_per_token, slow, wait_until

MODEL = "claude-haiku-4-5"


def _rows(engine: Engine, query: str, **params: Any) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(query), params).all()]


def _run(env: dict[str, str], tenant: str, prompt: str, *extra: str) -> dict[str, Any]:
    done = run_ezq(
        "enqueue",
        "--model",
        MODEL,
        "--tenant",
        tenant,
        *extra,
        "--wait",
        "--timeout",
        "60",
        prompt,
        env=env,
    )
    assert done.stdout, done.stderr
    job: dict[str, Any] = json.loads(done.stdout)
    return job


def test_no_admission_rows_without_rules_and_budgets_count_earlier_spend(
    own_database: tuple[str, Engine],
    worker_factory: Callable[..., WorkerProcess],
    own_queue: str,
    fake_gateway: Any,
) -> None:
    url, engine = own_database
    env = {"DATABASE_URL": url, "EZQ_QUEUE": own_queue}
    price_per_token(MODEL, env)
    worker_factory(env=env)
    tenant = f"t-{secrets.token_hex(4)}"

    # Nothing configured: the job runs and writes no admission (nothing to reserve).
    first = _run(env, tenant, "spend before any budget")
    assert first["status"] == "succeeded", first
    assert _rows(engine, "SELECT count(*) FROM flow_admissions") == [(0,)]
    ((spent,),) = _rows(engine, "SELECT sum(cost_usd) FROM token_usage WHERE tenant = :t", t=tenant)
    assert spent is not None and Decimal(spent) > 0

    # A budget set now counts that spend: $1 is left, less than the next job's worst case
    # ($100 of max_tokens), so it fails at claim, before any call.
    budget = run_ezq(
        "budgets", "set", "--tenant", tenant, "--monthly-usd", str(Decimal(spent) + 1), env=env
    )
    assert budget.returncode == 0, budget.stderr
    calls_before = len(fake_gateway.requests)
    over = _run(env, tenant, "worst case over what is left", "--param", "max_tokens=1000000")
    assert over["status"] == "failed" and over["error"]["type"] == "budget_exceeded", over
    assert over["attempts"] == 0
    assert "$1.000000 left of the" in over["error"]["message"]
    assert not any(
        "worst case over what is left" in str(r.body) for r in fake_gateway.requests[calls_before:]
    )

    # With a budget in force, a call is reserved at claim and settled with its outcome, in
    # the same transaction as its usage: no reservation is left once the job has ended.
    fits = _run(env, tenant, "fits", "--param", "max_tokens=5")
    assert fits["status"] == "succeeded", fits
    ((settled, used, total),) = _rows(
        engine,
        "SELECT a.settled_at IS NOT NULL, a.tokens_used, u.total_tokens FROM flow_admissions a"
        " JOIN token_usage u ON u.job_id = a.job_id WHERE a.job_id = :j",
        j=fits["job_id"],
    )
    assert settled and used == total
    shown = run_ezq("budgets", "list", "--format", "json", env=env)
    assert shown.returncode == 0, shown.stderr
    (row,) = [b for b in json.loads(shown.stdout) if b["tenant"] == tenant]
    ((month_spend,),) = _rows(
        engine, "SELECT sum(cost_usd) FROM token_usage WHERE tenant = :t", t=tenant
    )
    assert Decimal(str(row["spent_usd"])) == Decimal(month_spend)


def test_equal_jobs_each_run_from_their_own_message(
    own_database: tuple[str, Engine],
    worker_factory: Callable[..., WorkerProcess],
    own_queue: str,
    fake_gateway: Any,
) -> None:
    """Among jobs of equal rank a message runs its own job: none is parked to wait for a
    call to end, so each job is received exactly once."""
    url, engine = own_database
    env = {"DATABASE_URL": url, "EZQ_QUEUE": own_queue, "EZQ_LOG_LEVEL": "INFO"}
    marker = f"equal-{secrets.token_hex(4)}"
    slow(fake_gateway, marker, latency=0.2)
    tenant = f"t-{secrets.token_hex(4)}"

    def enqueue(i: int) -> str:
        done = run_ezq("enqueue", "--model", MODEL, "--tenant", tenant, f"{marker} {i}", env=env)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    # A backlog first, then the worker: its threads claim side by side from it.
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(enqueue, range(30)))
    # The sweep would republish jobs queued longer than EZQ_REDISPATCH_AFTER (a slow
    # enqueue under load): out of the way, so that every message received is the producer's.
    # At DEBUG, so that Celery logs each message it receives (counted below).
    worker = worker_factory(
        env={
            **env,
            "EZQ_WORKER_CONCURRENCY": "8",
            "EZQ_REDISPATCH_AFTER": "600",
            "EZQ_LOG_LEVEL": "DEBUG",
        }
    )
    wait_until(
        lambda: _rows(engine, "SELECT count(*) FROM jobs WHERE status <> 'succeeded'") == [(0,)],
        "every job succeeded",
        timeout=60,
    )
    # One message per attempt (a retry after a gateway error under load is a message of
    # its own): none received for a job that was parked and woken again.
    ((attempts,),) = _rows(engine, "SELECT sum(attempts) FROM jobs")
    received = [line for line in worker.log().splitlines() if " received" in line]
    assert attempts >= len(ids)
    assert len(received) == attempts, "\n".join(received)

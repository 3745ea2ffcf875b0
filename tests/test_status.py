"""``ezq status``: one screen of the backlog per tenant and model, read from Postgres."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from sqlalchemy import text

from service import get_job
from service.db.session import transaction
from service.webhooks import outbox
from tests.conftest import run_ezq, sql
from tests.seeding import seed_job


def test_status_counts_the_backlog_per_tenant_and_model(
    own_database_settings: tuple[str, Any], service_env: dict[str, str]
) -> None:
    """Queued, in flight, retrying, throttled, oldest age and recent failures match the rows
    (on a database of its own: the suite's worker, which sweeps its database every second,
    would run the seeded jobs, which have no message, and change its global figures)."""
    url, _ = own_database_settings
    env = {**service_env, "DATABASE_URL": url}
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    error_type = f"kind_{uuid.uuid4().hex[:6]}"
    first = seed_job(tenant=tenant, status="queued", age_s=120)
    conversation = get_job(first)["conversation_id"]
    seed_job(tenant=tenant, status="queued", conversation_id=conversation)  # waits for `first`
    seed_job(tenant=tenant, status="running")
    seed_job(tenant=tenant, status="retrying", error_type="timeout")
    for _ in range(2):
        failed = seed_job(tenant=tenant, status="failed", error_type=error_type)
    with transaction() as session:  # one webhook delivery waiting
        outbox.add_delivery(
            session,
            job_id=failed,
            event_type="job.failed",
            url="http://127.0.0.1:9/hook",
            payload='{"type": "job.failed"}',
        )

    done = run_ezq("status", "--format", "json", env=env)
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    [row] = [r for r in status["by_tenant_model"] if r["tenant"] == tenant]
    assert (row["queued"], row["in_flight"], row["retrying"], row["throttled"]) == (2, 1, 1, 1)
    [(oldest,)] = sql(
        "SELECT min(created_at) FROM jobs WHERE tenant = :t AND status = 'queued'",
        database=url,
        t=tenant,
    )
    assert row["oldest_queued_at"] == oldest.isoformat()
    assert status["failures_last_hour"][error_type] == 2
    assert status["oldest_queued_age_seconds"] >= 120
    assert status["webhook_backlog"] == 1

    screen = run_ezq("status", env={**env, "COLUMNS": "80"})
    assert screen.returncode == 0, screen.stderr
    assert max(len(line) for line in screen.stdout.splitlines()) <= 80
    assert f"{error_type} 2" in " ".join(screen.stdout.split())
    assert "IN FLIGHT" in screen.stdout and "THROTTLED" in screen.stdout


def test_status_says_when_no_worker_sweeps(
    own_database_settings: tuple[str, Any], service_env: dict[str, str]
) -> None:
    """With no worker sweeping (EZQ_SWEEP_INTERVAL=0 on all), nothing else says that
    recovery has stopped: ``ezq status`` does, and says when the sweep last ran."""
    url, engine = own_database_settings
    env = {**service_env, "DATABASE_URL": url}

    never = run_ezq("status", env={**env, "COLUMNS": "200"})
    assert never.returncode == 0, never.stderr
    assert "sweep     never ran (EZQ_SWEEP_INTERVAL=0 everywhere?)" in never.stdout
    assert (
        json.loads(run_ezq("status", "--format", "json", env=env).stdout)["last_sweep_at"] is None
    )

    with engine.begin() as conn:  # a sweep ran a minute ago, and none since
        conn.execute(
            text(
                "INSERT INTO sweep_runs (name, last_run_at, last_worker)"
                " VALUES ('sweep', now() - interval '60 seconds', 'w')"
            )
        )
    stale = run_ezq("status", env={**env, "COLUMNS": "200"})
    assert "ago: stopped?" in stale.stdout, stale.stdout
    document = json.loads(run_ezq("status", "--format", "json", env=env).stdout)
    [(last,)] = sql("SELECT last_run_at FROM sweep_runs", database=url)
    assert document["last_sweep_at"] == last.isoformat()

    with engine.begin() as conn:
        conn.execute(text("UPDATE sweep_runs SET last_run_at = now()"))
    # Sweeps every 10 minutes: however slowly the command starts, this one is recent.
    slow = {"EZQ_SWEEP_INTERVAL": "600", "EZQ_LEASE_SECONDS": "1300"}
    fresh = run_ezq("status", env={**env, "COLUMNS": "200", **slow})
    assert "sweep     last ran" in fresh.stdout and "stopped" not in fresh.stdout, fresh.stdout


@pytest.mark.usefixtures("service_env")
def test_the_sweep_age_gauge_follows_the_sweep(own_database_settings: tuple[str, Any]) -> None:
    """``ezq_sweep_age_seconds``: absent while no sweep ever ran, then the seconds since."""
    from service.config import get_settings
    from service.metrics.backlog import BacklogCollector
    from service.worker.sweep import sweep

    def gauge() -> list[float]:
        families = BacklogCollector(ttl_seconds=0).collect()
        [family] = [f for f in families if f.name == "ezq_sweep_age_seconds"]
        return [sample.value for sample in family.samples]

    assert gauge() == []
    assert sweep(get_settings(), worker="test", force=True) is not None
    [age] = gauge()
    assert 0 <= age < 10

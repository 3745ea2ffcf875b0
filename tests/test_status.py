"""``ezq status``: one screen of the backlog per tenant and model, read from Postgres."""

from __future__ import annotations

import json
import uuid

from service import get_job
from tests.conftest import run_ezq, sql
from tests.seeding import seed_job


def test_status_counts_the_backlog_per_tenant_and_model(service_env: dict[str, str]) -> None:
    """Queued, in flight, retrying, throttled, oldest age and recent failures match the rows."""
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    error_type = f"kind_{uuid.uuid4().hex[:6]}"
    first = seed_job(tenant=tenant, status="queued", age_s=120)
    conversation = get_job(first)["conversation_id"]
    seed_job(tenant=tenant, status="queued", conversation_id=conversation)  # waits for `first`
    seed_job(tenant=tenant, status="running")
    seed_job(tenant=tenant, status="retrying", error_type="timeout")
    for _ in range(2):
        seed_job(tenant=tenant, status="failed", error_type=error_type)

    done = run_ezq("status", "--format", "json")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    [row] = [r for r in status["by_tenant_model"] if r["tenant"] == tenant]
    assert (row["queued"], row["in_flight"], row["retrying"], row["throttled"]) == (2, 1, 1, 1)
    [(oldest,)] = sql(
        "SELECT min(created_at) FROM jobs WHERE tenant = :t AND status = 'queued'", t=tenant
    )
    assert row["oldest_queued_at"] == oldest.isoformat()
    assert status["failures_last_hour"][error_type] == 2
    assert status["oldest_queued_age_seconds"] >= 120
    [(pending,)] = sql("SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'")
    assert status["webhook_backlog"] == pending

    screen = run_ezq("status", env={"COLUMNS": "80"})
    assert screen.returncode == 0, screen.stderr
    assert max(len(line) for line in screen.stdout.splitlines()) <= 80
    assert f"{error_type} 2" in " ".join(screen.stdout.split())
    assert "IN FLIGHT" in screen.stdout and "THROTTLED" in screen.stdout

"""Budgets stop spend: a job whose worst case does not fit what is left fails at claim with
``budget_exceeded`` (and its webhook) before any gateway call, and concurrent jobs never
overshoot together."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from tests.conftest import WorkerProcess, run_ezq, sql, wait_for_job
from tests.flow_support import enqueue_many, new_tenant, price_per_token, slow

# Priced for these tests only; no other test prices it.
MODEL = "claude-haiku-4-5"
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture(scope="module")
def priced() -> None:
    """$100 per million tokens in and out: $0.0001 a token."""
    price_per_token(MODEL)


@pytest.mark.usefixtures("priced")
def test_a_budget_stops_spend_and_concurrent_jobs_never_overshoot(
    worker_factory: Callable[..., WorkerProcess],
    fake_gateway: Any,
    own_queue: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Twenty jobs on two workers of eight threads against a $0.02 budget: the month's cost
    never passes it, the jobs it stops fail budget_exceeded with no call made, and a later
    job with a callback gets its job.failed webhook."""
    tenant, marker = new_tenant(), f"budget-{secrets.token_hex(4)}"
    out = run_ezq("budgets", "set", "--tenant", tenant, "--monthly-usd", "0.02")
    assert out.returncode == 0, out.stderr
    slow(fake_gateway, marker, latency=0.3)
    for _ in range(2):
        worker_factory(env={"EZQ_QUEUE": own_queue})
    jobs = enqueue_many(20, marker, tenant=tenant, model=MODEL, params={"max_tokens": 20})
    ended = [wait_for_job(j, timeout=60) for j in jobs]
    failed = [j for j in ended if j["status"] == "failed"]
    assert failed and len(failed) < 20
    assert {j["error"]["type"] for j in failed} == {"budget_exceeded"}
    assert all(j["attempts"] == 0 for j in failed)
    called = {
        r.body["messages"][-1]["content"] for r in fake_gateway.requests if marker in str(r.body)
    }
    assert len(called) == 20 - len(failed)
    ((spent,),) = sql("SELECT sum(cost_usd) FROM token_usage WHERE tenant = :t", t=tenant)
    assert Decimal(spent) <= Decimal("0.02")

    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    from service.config import get_settings

    get_settings.cache_clear()
    # Its worst case alone (max_tokens 250: over $0.025) is more than the whole budget.
    (late,) = enqueue_many(
        1,
        marker + " late",
        tenant=tenant,
        model=MODEL,
        params={"max_tokens": 250},
        callback_url="https://hooks.example.com/ezq",
    )
    view = wait_for_job(late, timeout=30)
    assert view["status"] == "failed" and view["error"]["type"] == "budget_exceeded"
    assert "left of the $0.020000 monthly budget" in view["error"]["message"]
    deliveries = sql(
        "SELECT event_type, payload FROM webhook_deliveries WHERE job_id = :j", j=str(late)
    )
    assert len(deliveries) == 1 and deliveries[0][0] == "job.failed"
    assert json.loads(deliveries[0][1])["data"]["error"]["type"] == "budget_exceeded"

    report = json.loads(
        run_ezq("usage", "--tenant", tenant, "--since", "1d", "--format", "json").stdout
    )
    (budget,) = report["budgets"]
    assert Decimal(budget["monthly_usd"]) == Decimal("0.02")
    assert Decimal(budget["remaining_usd"]) == Decimal("0.02") - Decimal(spent)


def test_an_unpriced_model_follows_the_configured_policy(
    worker_factory: Callable[..., WorkerProcess], fake_gateway: Any, own_queue: str
) -> None:
    """With EZQ_BUDGET_UNPRICED=deny, a budgeted tenant's job on a model without a price
    fails budget_exceeded; with the default (allow) it runs."""
    tenant, marker = new_tenant(), f"unpriced-{secrets.token_hex(4)}"
    assert run_ezq("budgets", "set", "--tenant", tenant, "--monthly-usd", "5").returncode == 0
    deny = worker_factory(env={"EZQ_QUEUE": own_queue, "EZQ_BUDGET_UNPRICED": "deny"})
    (job,) = enqueue_many(1, marker, tenant=tenant, model="gpt-5.1")
    view = wait_for_job(job, timeout=30)
    assert view["status"] == "failed" and view["error"]["type"] == "budget_exceeded"
    assert "has no price" in view["error"]["message"]
    deny.stop()
    worker_factory(env={"EZQ_QUEUE": own_queue})
    (job,) = enqueue_many(1, marker + " allowed", tenant=tenant, model="gpt-5.1")
    assert wait_for_job(job, timeout=30)["status"] == "succeeded"


@pytest.mark.usefixtures("service_env")
@pytest.mark.parametrize(
    ("typed", "stored_as"), [("0.0000004", "0.000000"), ("12.0000005", "12.000000")]
)
def test_a_budget_finer_than_it_is_kept_is_refused_not_rounded(typed: str, stored_as: str) -> None:
    """A budget keeps 6 decimals: a finer one would be stored rounded (0.0000004 as a zero
    budget that fails every job), so it is refused in one line naming --monthly-usd and
    nothing is stored; 6 decimals are kept exactly."""
    tenant = new_tenant()
    done = run_ezq("budgets", "set", "--tenant", tenant, "--monthly-usd", typed)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"ezq: error: --monthly-usd: '{typed}' has more than the 6 decimals a budget keeps"
        f" (it would be stored as {stored_as}); give at most 6 decimals"
    ]
    negative = run_ezq("budgets", "set", "--tenant", tenant, "--monthly-usd", "-1")
    assert negative.stderr.startswith("ezq: error: --monthly-usd: must be an amount from 0")
    assert sql("SELECT count(*) FROM flow_budgets WHERE tenant = :t", t=tenant) == [(0,)]

    exact = run_ezq("budgets", "set", "--tenant", tenant, "--monthly-usd", "0.000001")
    assert exact.returncode == 0, exact.stderr
    assert sql("SELECT monthly_usd FROM flow_budgets WHERE tenant = :t", t=tenant) == [
        (Decimal("0.000001"),)
    ]
    run_ezq("budgets", "delete", "--tenant", tenant)

"""Limits and budgets over HTTP: admin keys set, list and delete them; a tenant key cannot;
a job's priority is accepted in the body."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import sql
from tests.flow_support import new_tenant
from tests.test_api_tenants import create_key

ADMIN_TOKEN = "admin-token-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def server(api_server_factory: Any) -> Any:
    return api_server_factory(EZQ_API_TOKENS=ADMIN_TOKEN)


def _client(server: Any, key: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"})


def test_admin_keys_set_list_and_delete_limits_and_budgets(server: Any) -> None:
    """PUT creates or replaces a scope's row, GET lists it with what is in force, DELETE
    removes it (404 when there is none); a bad field is a 422 naming it."""
    tenant = new_tenant()
    admin = _client(server, ADMIN_TOKEN)
    body = {"tenant": tenant, "model": "glm-5.1", "max_concurrent": 3, "adaptive_ttft_ms": 900}
    answer = admin.put("/v1/limits", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["current_concurrency"] == 3
    listed = [r for r in admin.get("/v1/limits").json() if r["tenant"] == tenant]
    assert listed == [answer.json()]
    bad = admin.put("/v1/limits", json={"tenant": tenant, "max_concurrent": 0})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "max_concurrent"
    assert admin.put("/v1/limits", json={"max_concurrent": 2}).status_code == 422
    gone = admin.delete("/v1/limits", params={"tenant": tenant, "model": "glm-5.1"})
    assert gone.status_code == 204
    again = admin.delete("/v1/limits", params={"tenant": tenant, "model": "glm-5.1"})
    assert again.status_code == 404 and again.json()["error"]["type"] == "not_found"

    budget = admin.put("/v1/budgets", json={"tenant": tenant, "monthly_usd": "12.5"})
    assert budget.status_code == 200, budget.text
    assert budget.json()["remaining_usd"] == "12.500000"
    assert admin.put("/v1/budgets", json={"tenant": tenant, "monthly_usd": -1}).status_code == 422
    assert [b["tenant"] for b in admin.get("/v1/budgets").json()].count(tenant) == 1
    assert admin.delete("/v1/budgets", params={"tenant": tenant}).status_code == 204
    assert sql("SELECT count(*) FROM flow_budgets WHERE tenant = :t", t=tenant) == [(0,)]


def test_bad_limits_and_budgets_name_the_body_fields(server: Any) -> None:
    """A limit without a limit, an adaptive one without its ceiling and a budget finer than
    the 6 decimals kept are 422s naming the body's fields; nothing is stored."""
    tenant = new_tenant()
    admin = _client(server, ADMIN_TOKEN)
    refusals = [
        (
            "/v1/limits",
            {"tenant": tenant},
            "max_concurrent",
            "max_concurrent: give at least one of max_concurrent, requests_per_window,"
            " tokens_per_window",
        ),
        (
            "/v1/limits",
            {"tenant": tenant, "adaptive_ttft_ms": 900},
            "adaptive_ttft_ms",
            "adaptive_ttft_ms: needs max_concurrent (the adaptive ceiling)",
        ),
        (
            "/v1/budgets",
            {"tenant": tenant, "monthly_usd": "0.0000004"},
            "monthly_usd",
            "monthly_usd: '0.0000004' has more than the 6 decimals a budget keeps (it would be"
            " stored as 0.000000); give at most 6 decimals",
        ),
    ]
    for path, body, field, message in refusals:
        answer = admin.put(path, json=body)
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["field"] == field
        assert answer.json()["error"]["message"] == message
    assert sql("SELECT count(*) FROM flow_budgets WHERE tenant = :t", t=tenant) == [(0,)]
    assert sql("SELECT count(*) FROM flow_limits WHERE tenant = :t", t=tenant) == [(0,)]


def test_a_tenant_key_cannot_touch_limits_but_sends_a_priority(server: Any) -> None:
    """A tenant key gets 403 on /v1/limits and /v1/budgets; its jobs take a priority 0-9 and
    refuse 10, naming the field."""
    tenant = new_tenant()
    key = create_key("--tenant", tenant)["key"]
    client = _client(server, key)
    assert client.get("/v1/limits").status_code == 403
    assert client.put("/v1/budgets", json={"tenant": tenant, "monthly_usd": 1}).status_code == 403
    messages = [{"role": "user", "content": "prio over http"}]
    job = client.post("/v1/jobs", json={"model": "glm-5.1", "messages": messages, "priority": 8})
    assert job.status_code == 202, job.text
    assert sql("SELECT priority FROM jobs WHERE id = :id", id=job.json()["job_id"]) == [(8,)]
    refused = client.post(
        "/v1/jobs", json={"model": "glm-5.1", "messages": messages, "priority": 10}
    )
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "priority"

"""Replaying over HTTP: ``POST /v1/jobs/{id}/replay`` and ``POST /v1/jobs/replay``."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import sql, wait_for_job
from tests.seeding import seed_job
from tests.test_api import api  # noqa: F401  (the running `ezq api` fixture)


@pytest.mark.usefixtures("worker")
def test_replay_one_job(api: httpx.Client, fake_gateway: Any) -> None:  # noqa: F811
    """POST /v1/jobs/{id}/replay answers 202 with the new job, which runs and links back."""
    original = seed_job(
        f"http {uuid.uuid4().hex}",
        status="failed",
        error_type="server_error",
        tenant="web",
        metadata={"via": "http"},
    )
    answer = api.post(f"/v1/jobs/{original}/replay")
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert job["replay_of"] == str(original) and job["tenant"] == "web"
    assert answer.headers["location"] == f"/v1/jobs/{job['job_id']}"
    assert wait_for_job(job["job_id"])["status"] == "succeeded"

    again = api.post(f"/v1/jobs/{original}/replay")
    assert again.status_code == 409
    assert again.json()["error"]["type"] == "job_not_replayable"
    assert again.json()["error"]["reason"] == "already_replayed"
    assert api.post(f"/v1/jobs/{uuid.uuid4()}/replay").status_code == 404
    assert api.post("/v1/jobs/nope/replay").status_code == 404


def test_replay_by_filters(api: httpx.Client) -> None:  # noqa: F811
    """POST /v1/jobs/replay with filters replays the failed matches; dry_run only counts."""
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    failed = [seed_job(status="failed", error_type="timeout", tenant=tenant) for _ in range(2)]
    seed_job(status="succeeded", tenant=tenant)

    dry = api.post("/v1/jobs/replay", json={"tenant": tenant, "dry_run": True})
    assert dry.status_code == 200, dry.text
    assert dry.json()["count"] == 2 and dry.json()["dry_run"] is True

    done = api.post("/v1/jobs/replay", json={"tenant": tenant, "error_type": ["timeout"]})
    assert done.status_code == 202, done.text
    made = done.json()["replays"]
    assert sorted(r["original_id"] for r in made) == sorted(str(i) for i in failed)
    assert sql(
        "SELECT count(*) FROM jobs WHERE replay_of IS NOT NULL AND tenant = :t", t=tenant
    ) == [(2,)]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "body"),
        ({"tenant": "x", "colour": "red"}, "colour"),
        ({"since": "yesterday"}, "since"),
        ({"status": "stuck"}, "status"),
        ({"tenant": "x", "limit": 0}, "limit"),
        ({"metadata": ["a"]}, "metadata"),
        ([1, 2], "body"),
        # What Postgres cannot compare: named, never a 500.
        ({"model": "a\u0000b"}, "model"),
        ({"tenant": "ac\ud800me"}, "tenant"),
        ({"error_type": ["timeout", "x\u0000"]}, "error_type[1]"),
        ({"metadata": {"k\u0000": "v"}}, "metadata.k\u0000"),
        ({"metadata": {"k": "a\u0000b"}}, "metadata.k"),
        ({"metadata": {"k": float("inf")}}, "metadata.k"),
    ],
)
def test_bad_replay_filters_are_422(api: httpx.Client, body: Any, field: str) -> None:  # noqa: F811
    """A bad filter is a 422 invalid_request naming the field; nothing is replayed."""
    before = sql("SELECT count(*) FROM jobs")
    # Sent as text: httpx would refuse Infinity; a lone surrogate goes as its escape.
    content = json.dumps(body, allow_nan=True)
    answer = api.post(
        "/v1/jobs/replay", content=content, headers={"content-type": "application/json"}
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == field
    assert sql("SELECT count(*) FROM jobs") == before

"""The HTTP interface, served by the real `ezq api` command."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import free_port, sql

TOKEN = "ezq-test-token-" + uuid.uuid4().hex
USER = [{"role": "user", "content": "over http"}]


@pytest.fixture(scope="module")
def api(api_server_factory: Any) -> Iterator[httpx.Client]:
    """`ezq api` on a free port, and a client that sends the bearer token."""
    server = api_server_factory(EZQ_API_TOKENS=f"other-token-0123456789,{TOKEN}")
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


def jobs_count() -> int:
    return int(sql("SELECT count(*) FROM jobs")[0][0])


@pytest.mark.usefixtures("worker")
def test_post_then_get_a_finished_job(api: httpx.Client, fake_gateway: Any) -> None:
    """POST /v1/jobs answers 202 with the queued job; GET returns it once it succeeded."""
    created = api.post("/v1/jobs", json={"model": "glm-5.1", "messages": USER, "tenant": "web"})
    assert created.status_code == 202, created.text
    job = created.json()
    assert created.headers["location"] == f"/v1/jobs/{job['job_id']}"
    assert job["tenant"] == "web"
    deadline = time.monotonic() + 30
    while job["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
        job = api.get(f"/v1/jobs/{job['job_id']}").json()
    assert job["status"] == "succeeded"
    assert job["content"] == "echo[1]: over http"
    conversation = api.get(f"/v1/conversations/{job['conversation_id']}").json()
    assert [m["role"] for m in conversation["messages"]] == ["user", "assistant"]


@pytest.mark.usefixtures("worker")
def test_surface_in_the_body(api: httpx.Client, fake_gateway: Any) -> None:
    """A body's surface is kept on the job and decides where the call goes."""
    marker = uuid.uuid4().hex
    body = {"model": "glm-5.1", "messages": [{"role": "user", "content": marker}]}
    created = api.post("/v1/jobs", json={**body, "surface": "anthropic"})
    assert created.status_code == 202, created.text
    assert created.json()["surface"] == "anthropic"
    deadline = time.monotonic() + 30
    while not [r for r in fake_gateway.requests if marker in r.raw.decode()]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    (sent,) = [r for r in fake_gateway.requests if marker in r.raw.decode()]
    assert sent.path == "/anthropic/v1/messages"


def test_requests_without_a_valid_token_are_refused(api: httpx.Client) -> None:
    """No token or a wrong token is a 401, and nothing is written."""
    before = jobs_count()
    for headers in ({}, {"Authorization": "Bearer nope"}):
        response = httpx.post(
            f"{api.base_url}/v1/jobs", json={"model": "m", "messages": USER}, headers=headers
        )
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "unauthorized"
    assert jobs_count() == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"messages": USER}, "model"),
        ({"model": "m", "messages": [{"role": "bot", "content": "x"}]}, "messages[0].role"),
        ({"model": "m", "messages": USER, "params": 3}, "params"),
        ({"model": "m", "messages": USER, "surprise": 1}, "surprise"),
        ({"model": "m", "messages": USER, "params": {"colour": "red"}}, "params.colour"),
        ({"model": "m", "messages": USER, "surface": "gemini"}, "surface"),
        ([1, 2], "body"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(api: httpx.Client, body: Any, field: str) -> None:
    """Invalid bodies answer 422 with the field at fault; nothing is written."""
    before = jobs_count()
    response = api.post("/v1/jobs", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["type"], error["field"]) == ("invalid_request", field)
    assert jobs_count() == before


def test_unknown_ids_are_404(api: httpx.Client) -> None:
    """Unknown jobs, conversations and malformed ids answer 404."""
    assert api.get(f"/v1/jobs/{uuid.uuid4()}").status_code == 404
    assert api.get("/v1/jobs/not-a-uuid").status_code == 404
    assert api.get(f"/v1/conversations/{uuid.uuid4()}").status_code == 404
    response = api.post(
        "/v1/jobs", json={"model": "m", "messages": USER, "conversation_id": str(uuid.uuid4())}
    )
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "conversation_not_found"


def test_idempotency_key_header(api: httpx.Client) -> None:
    """The Idempotency-Key header returns the first job for the same body, 409 otherwise."""
    key = uuid.uuid4().hex
    first = api.post(
        "/v1/jobs", json={"model": "m", "messages": USER}, headers={"Idempotency-Key": key}
    )
    again = api.post(
        "/v1/jobs", json={"model": "m", "messages": USER}, headers={"Idempotency-Key": key}
    )
    other = api.post(
        "/v1/jobs",
        json={"model": "m", "messages": [{"role": "user", "content": "different"}]},
        headers={"Idempotency-Key": key},
    )
    assert first.json()["job_id"] == again.json()["job_id"]
    assert other.status_code == 409
    assert other.json()["error"]["job_id"] == first.json()["job_id"]


def test_healthz_needs_no_token(api: httpx.Client) -> None:
    """/healthz reports the database and the broker without authentication."""
    response = httpx.get(f"{api.base_url}/healthz")
    assert response.status_code == 200
    assert response.json() == {"database": "ok", "broker": "ok"}


def test_api_refuses_to_start_with_a_short_token(service_env: dict[str, str]) -> None:
    """`ezq api` with a too-short EZQ_API_TOKENS token stops with one line naming it."""
    out = subprocess.run(
        [sys.executable, "-m", "service", "api", "--port", str(free_port())],
        env={**os.environ, **service_env, "EZQ_API_TOKENS": "short"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert "EZQ_API_TOKENS" in out.stderr


def test_cancel_over_http(api: httpx.Client) -> None:
    """POST /v1/jobs/{id}/cancel cancels a job, twice is fine, an ended job is a 409."""
    from sqlalchemy import text

    from service.db import queries
    from service.db.session import transaction
    from service.validation import validate_request

    with transaction() as session:
        pending, _ = queries.create_job(session, validate_request(model="m", messages=USER))
        ended, _ = queries.create_job(session, validate_request(model="m", messages=USER))
        session.execute(text("UPDATE jobs SET status = 'failed' WHERE id = :j"), {"j": ended})

    first = api.post(f"/v1/jobs/{pending}/cancel")
    again = api.post(f"/v1/jobs/{pending}/cancel")
    refused = api.post(f"/v1/jobs/{ended}/cancel")

    assert (first.status_code, first.json()["status"]) == (200, "cancelled")
    assert (again.status_code, again.json()["status"]) == (200, "cancelled")
    assert refused.status_code == 409
    # The openai SDK retries a 409 unless told not to: the same request gets the same answer.
    assert refused.headers["x-should-retry"] == "false"
    assert "x-should-retry" not in first.headers
    assert refused.json()["error"] == {
        "type": "job_already_finished",
        "message": f"job {ended} already ended (failed)",
        "status": "failed",
    }
    assert api.post(f"/v1/jobs/{uuid.uuid4()}/cancel").status_code == 404

"""Fixes to the HTTP interface, against a real `ezq api`, a real worker and the fake
gateway: `/metrics` needs an admin credential, an event stream ends when its key no
longer sees the job's tenant, a repeated upload `tenant` is refused, a batch line
cancelled on its own says so in the error file, and `stream_job` of a malformed id."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from service.fake_gateway import Fault
from tests.conftest import run_ezq, sql, wait_for_job
from tests.test_batches import wait_until

ADMIN_TOKEN = "fixes-admin-" + uuid.uuid4().hex
TENANT = "fix-a-" + uuid.uuid4().hex[:6]
OTHER = "fix-b-" + uuid.uuid4().hex[:6]
MODEL = "glm-5.1"


def create_key(*args: str) -> tuple[str, str]:
    """A new key made by ``ezq keys create ARGS``: (key, id)."""
    done = run_ezq("keys", "create", *args, "--format", "json")
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)
    return str(created["key"]), str(created["id"])


def execute(statement: str, **params: Any) -> None:
    """Run a statement that writes, committed."""
    from sqlalchemy import text

    from service.db.session import get_engine

    with get_engine().begin() as conn:
        conn.execute(text(statement), params)


@pytest.fixture(scope="module")
def server(api_server_factory: Any, worker: Any) -> Any:
    return api_server_factory(EZQ_API_TOKENS=ADMIN_TOKEN, EZQ_LIVE_HEARTBEAT="0.5")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# 1. /metrics needs an admin credential.


def test_metrics_needs_an_admin_credential(server: Any) -> None:
    """No key or a bad one is a 401 and a tenant key a 403, in the error envelope; an
    EZQ_API_TOKENS token sent as Prometheus sends it (`Authorization: Bearer`) and an
    admin key get the page, and a revoked admin key no longer does."""
    url = f"{server.url}/metrics"
    tenant_key, _ = create_key("--tenant", TENANT)
    admin_key, admin_id = create_key("--admin", "--name", "fixes scraper")

    for headers in ({}, bearer("ezq_not-a-key"), bearer(ADMIN_TOKEN + "x")):
        refused = httpx.get(url, headers=headers, timeout=10)
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"]["type"] == "unauthorized"
        assert refused.headers["www-authenticate"] == "Bearer"
        assert "ezq_queue_depth" not in refused.text

    forbidden = httpx.get(url, headers=bearer(tenant_key), timeout=10)
    assert forbidden.status_code == 403, forbidden.text
    error = forbidden.json()["error"]
    assert error["type"] == "forbidden"
    assert "admin" in error["message"]
    assert "ezq_queue_depth" not in forbidden.text

    for key in (ADMIN_TOKEN, admin_key):
        page = httpx.get(url, headers=bearer(key), timeout=10)
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/plain")
        assert "ezq_queue_depth" in page.text and "ezq_webhook_backlog" in page.text

    revoked = run_ezq("keys", "revoke", admin_id)
    assert revoked.returncode == 0, revoked.stderr
    assert httpx.get(url, headers=bearer(admin_key), timeout=10).status_code == 401


# 2. An event stream ends when its key no longer sees the job's tenant.

# 16 chunks of 8 characters, 0.4 s apart: the job runs about 6 s, against a 0.5 s heartbeat.
REPLY = "".join(f"word{i:02d}, " for i in range(16))


def enqueue(http: httpx.Client, prompt: str, tenant: str) -> str:
    answer = http.post(
        "/v1/jobs",
        json={"model": MODEL, "messages": [{"role": "user", "content": prompt}], "tenant": tenant},
    )
    assert answer.status_code == 202, answer.text
    return str(answer.json()["job_id"])


def event_types(http: httpx.Client, job_id: str, on_event: Callable[[int], None]) -> Iterator[str]:
    """The types of the stream's events as they arrive; ``on_event(n)`` runs after the
    n-th (from 1)."""
    with http.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        assert response.status_code == 200, response.read()
        seen = 0
        for line in response.iter_lines():
            if line.startswith("event: "):
                yield line.removeprefix("event: ")
                seen += 1
                on_event(seen)


# After the first delta the key's tenants change but keep the job's; after the fifth
# (1.6 s later, three heartbeats) they no longer do.
# Events come 0.4 s apart: the tenants are dropped about 1.2 s into the call, well before
# the suite's 4 s attempt deadline would cut it.
KEEP_AT, DROP_AT = 1, 3


def test_a_stream_ends_once_its_key_no_longer_sees_the_job(server: Any, fake_gateway: Any) -> None:
    """The key's tenants changed mid-job (`UPDATE api_keys SET tenants = ...`): while they
    still hold the job's tenant the stream goes on; once they do not, it ends within a
    heartbeat, before the job does, and reconnecting is a 404."""
    key, key_id = create_key("--tenant", TENANT)
    prompt = f"fixes {uuid.uuid4()}"
    fake_gateway.add_faults(Fault(match=prompt, reply=REPLY, chunk_delay=0.4))

    def set_tenants(tenants: list[str]) -> None:
        execute(
            "UPDATE api_keys SET tenants = CAST(:tenants AS text[]) WHERE id = :id",
            tenants=tenants,
            id=uuid.UUID(key_id),
        )

    def on_event(n: int) -> None:
        if n == KEEP_AT:
            set_tenants([OTHER, TENANT])
        elif n == DROP_AT:
            set_tenants([OTHER])

    with httpx.Client(base_url=server.url, headers=bearer(key), timeout=30) as http:
        job_id = enqueue(http, prompt, TENANT)
        received = list(event_types(http, job_id, on_event))
        assert len(received) >= DROP_AT, "the stream ended while the key still saw the job"
        assert set(received) == {"delta"}, "the stream outlived its key's tenant"
        assert sql("SELECT status FROM jobs WHERE id = :j", j=job_id) == [("running",)]
        again = http.get(f"/v1/jobs/{job_id}/events")
        assert again.status_code == 404, again.text
        assert again.json()["error"]["type"] == "job_not_found"
    assert wait_for_job(job_id)["status"] == "succeeded"


# 3. A repeated upload `tenant` is refused.


def test_an_upload_with_tenant_given_twice_is_refused(server: Any) -> None:
    """`POST /v1/files` with two `tenant` fields (different or the same) is a 422 naming
    `tenant`, like `GET /v1/jobs?tenant=a&tenant=b`, and nothing is stored; one is taken."""
    key, _ = create_key("--tenant", TENANT, "--tenant", OTHER)
    name = f"twice-{uuid.uuid4().hex}.jsonl"
    content = json.dumps(
        {
            "custom_id": "one",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        }
    ).encode()

    def upload(*tenants: str) -> httpx.Response:
        fields: list[tuple[str, Any]] = [
            ("file", (name, content, "application/jsonl")),
            ("purpose", (None, "batch")),
            *(("tenant", (None, tenant)) for tenant in tenants),
        ]
        return httpx.post(f"{server.url}/v1/files", headers=bearer(key), files=fields, timeout=30)

    for tenants in ((TENANT, OTHER), (OTHER, TENANT), (TENANT, TENANT)):
        refused = upload(*tenants)
        assert refused.status_code == 422, refused.text
        error = refused.json()["error"]
        assert (error["type"], error["field"]) == ("invalid_request", "tenant")
        assert error["message"] == "tenant: may be given once"
    assert sql("SELECT count(*) FROM batch_files WHERE filename = :f", f=name) == [(0,)]

    listed = httpx.get(
        f"{server.url}/v1/jobs", params=[("tenant", TENANT), ("tenant", OTHER)], headers=bearer(key)
    )
    assert (listed.status_code, listed.json()["error"]["field"]) == (422, "tenant")

    stored = upload(OTHER)
    assert stored.status_code == 200, stored.text
    assert sql("SELECT tenant FROM batch_files WHERE filename = :f", f=name) == [(OTHER,)]


# 4. A batch line cancelled on its own.


def batch_line(custom_id: str, prompt: str) -> dict[str, Any]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}]}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def start_batch(client: openai.OpenAI, prompts: dict[str, str]) -> tuple[str, dict[str, str]]:
    """A batch of one line per prompt: its id and its lines' job ids by custom_id."""
    data = b"".join(json.dumps(batch_line(k, v)).encode() + b"\n" for k, v in prompts.items())
    uploaded = client.files.create(file=("lines.jsonl", data), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    rows = sql("SELECT custom_id, id FROM jobs WHERE batch_id = :b", b=batch.id)
    return batch.id, {str(custom_id): str(job_id) for custom_id, job_id in rows}


def all_running(batch_id: str, count: int) -> bool:
    rows = sql("SELECT status FROM jobs WHERE batch_id = :b", b=batch_id)
    return [s for (s,) in rows] == ["running"] * count


def ended(client: openai.OpenAI, batch_id: str, status: str) -> Any:
    def check() -> Any:
        batch = client.batches.retrieve(batch_id)
        return batch if batch.status == status else None

    return wait_until(check, f"batch {batch_id} {status}")


def lines_of(client: openai.OpenAI, file_id: str | None) -> dict[str, dict[str, Any]]:
    assert file_id is not None
    parsed = [json.loads(item) for item in client.files.content(file_id).text.splitlines()]
    return {item["custom_id"]: item for item in parsed}


def cancel_job(http: httpx.Client, job_id: str) -> None:
    answer = http.post(f"/v1/jobs/{job_id}/cancel")
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "cancelled"


ALONE_AFTER_1 = {
    "code": "cancelled",
    "message": "the request was cancelled (POST /v1/jobs/{id}/cancel) after 1 attempt",
}


def test_a_line_cancelled_alone_in_a_batch_never_cancelled(server: Any, fake_gateway: Any) -> None:
    """A running line cancelled with `POST /v1/jobs/{id}/cancel` while its batch goes on:
    the batch ends `completed` and the line's error says `cancelled`, not
    `batch_cancelled`; the file's size matches what is served."""
    key, _ = create_key("--tenant", TENANT)
    marker = uuid.uuid4().hex
    # About 2.7 s of stream each (under the suite's 4 s attempt deadline).
    prompts = {"own": f"own {marker}", "other": f"other {marker}"}
    for prompt in prompts.values():
        fake_gateway.add_faults(Fault(match=prompt, reply="slow word " * 7, chunk_delay=0.3))
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
    batch_id, jobs = start_batch(client, prompts)
    wait_until(lambda: all_running(batch_id, 2), "both lines running")
    with httpx.Client(base_url=server.url, headers=bearer(key), timeout=30) as http:
        cancel_job(http, jobs["own"])
    done = ended(client, batch_id, "completed")
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 1)
    errors = lines_of(client, done.error_file_id)
    assert set(errors) == {"own"}
    assert errors["own"]["error"] == ALONE_AFTER_1
    assert errors["own"]["response"] is None
    assert set(lines_of(client, done.output_file_id)) == {"other"}
    served = client.files.content(done.error_file_id).content
    assert client.files.retrieve(done.error_file_id).bytes == len(served)


def test_a_cancelled_batch_tells_its_cancel_from_its_lines_own(
    server: Any, fake_gateway: Any
) -> None:
    """In a batch that is cancelled: a line cancelled alone before the batch's cancel, and
    a running line cancelled alone after it, say `cancelled`; a running line whose call
    breaks after the batch's cancel (not retried) says `batch_cancelled`."""
    key, _ = create_key("--tenant", TENANT)
    marker = uuid.uuid4().hex
    prompts = {
        "early": f"early {marker}",
        "late": f"late {marker}",
        "broken": f"broken {marker}",
        "keeper": f"keeper {marker}",
    }
    for name in ("early", "late"):
        fake_gateway.add_faults(Fault(match=prompts[name], reply="slow word " * 7, chunk_delay=0.3))
    # Breaks after about 3.1 s (as late as the suite's 4 s attempt deadline leaves room
    # for: the batch's cancel must land first), on every attempt it would make.
    fake_gateway.add_faults(
        Fault(
            kind="drop_mid_stream",
            match=prompts["broken"],
            reply="broken word " * 8,
            after_chunks=7,
            chunk_delay=0.45,
            times=5,
        )
    )
    # Runs on after the batch's cancel (about 2.7 s, under the suite's 4 s attempt
    # deadline), and is kept.
    fake_gateway.add_faults(Fault(match=prompts["keeper"], reply="slow word " * 7, chunk_delay=0.3))
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
    batch_id, jobs = start_batch(client, prompts)
    wait_until(lambda: all_running(batch_id, 4), "every line running")
    with httpx.Client(base_url=server.url, headers=bearer(key), timeout=30) as http:
        cancel_job(http, jobs["early"])
        assert client.batches.cancel(batch_id).status == "cancelling"
        cancel_job(http, jobs["late"])
    done = ended(client, batch_id, "cancelled")
    errors = lines_of(client, done.error_file_id)
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 3), errors
    assert set(errors) == {"early", "late", "broken"}
    assert errors["early"]["error"] == ALONE_AFTER_1
    assert errors["late"]["error"] == ALONE_AFTER_1
    assert errors["broken"]["error"] == {
        "code": "batch_cancelled",
        "message": "the request was cancelled after 1 attempt",
    }
    assert set(lines_of(client, done.output_file_id)) == {"keeper"}
    served = client.files.content(done.error_file_id).content
    assert client.files.retrieve(done.error_file_id).bytes == len(served)


# 5. stream_job of a malformed id.


@pytest.mark.parametrize("job_id", ["not-a-uuid", "", 12345])
def test_stream_job_of_a_malformed_id_is_job_not_found(job_id: Any) -> None:
    """`stream_job` raises `JobNotFound` for an id that is not a UUID, as the HTTP route
    answers `404 job_not_found`, rather than a bare ValueError."""
    from service import stream_job
    from service.errors import JobNotFound

    with pytest.raises(JobNotFound):
        next(stream_job(job_id))

"""Two tenants over HTTP: every route is scoped to the key's tenants, in both directions."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from service.db import queries
from service.db.session import transaction
from service.validation import validate_request
from tests.conftest import places_holding, run_ezq, sql

ADMIN_TOKEN = "admin-token-" + uuid.uuid4().hex
USER = [{"role": "user", "content": "tenant test"}]
A, B = "acme-" + uuid.uuid4().hex[:6], "globex-" + uuid.uuid4().hex[:6]


@dataclass
class Team:
    tenant: str
    key_id: str
    key: str
    client: httpx.Client


def create_key(*args: str) -> dict[str, Any]:
    done = run_ezq("keys", "create", *args, "--format", "json")
    assert done.returncode == 0, done.stderr
    record: dict[str, Any] = json.loads(done.stdout)
    return record


@pytest.fixture(scope="module")
def server(api_server_factory: Any) -> Any:
    return api_server_factory(EZQ_API_TOKENS=ADMIN_TOKEN)


def _client(server: Any, key: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"})


@pytest.fixture(scope="module")
def teams(server: Any) -> Iterator[dict[str, Team]]:
    """Team A and team B, each with a key bound to its own tenant."""
    out = {}
    for label, tenant in (("a", A), ("b", B)):
        record = create_key("--tenant", tenant, "--name", f"team {label}")
        out[label] = Team(tenant, record["id"], record["key"], _client(server, record["key"]))
    yield out
    for team in out.values():
        team.client.close()


@pytest.fixture(scope="module")
def admin(server: Any) -> Iterator[httpx.Client]:
    with _client(server, ADMIN_TOKEN) as client:
        yield client


def queued_job(tenant: str) -> str:
    """A job of ``tenant`` that stays queued (no message is published for it)."""
    with transaction() as session:
        job_id, _ = queries.create_job(
            session, validate_request(model="m", messages=USER, tenant=tenant)
        )
    return str(job_id)


def conversation_of(job_id: str) -> str:
    return str(sql("SELECT conversation_id FROM jobs WHERE id = :j", j=job_id)[0][0])


DIRECTIONS = [("a", "b"), ("b", "a")]


def unknown_answer(client: httpx.Client, method: str, path: str) -> tuple[int, dict[str, Any]]:
    """What ``client`` gets for the same route with an id that does not exist."""
    response = client.request(method, path)
    return response.status_code, response.json()


@pytest.mark.parametrize("route", ["/v1/jobs/{}", "/v1/conversations/{}"])
@pytest.mark.parametrize(("owner", "other"), DIRECTIONS)
def test_other_tenants_rows_read_like_unknown_ones(
    teams: dict[str, Team], owner: str, other: str, route: str
) -> None:
    """GET of another tenant's job or conversation is exactly the 404 of an unknown id."""
    job_id = queued_job(teams[owner].tenant)
    the_id = job_id if route.startswith("/v1/jobs") else conversation_of(job_id)
    assert teams[owner].client.get(route.format(the_id)).status_code == 200
    response = teams[other].client.get(route.format(the_id))
    unknown = str(uuid.uuid4())
    status, body = unknown_answer(teams[other].client, "GET", route.format(unknown))
    assert (response.status_code, status) == (404, 404)
    assert response.json() == json.loads(json.dumps(body).replace(unknown, the_id))
    assert teams[owner].tenant not in response.text


@pytest.mark.parametrize(("owner", "other"), DIRECTIONS)
def test_other_tenants_job_cannot_be_cancelled(
    teams: dict[str, Team], owner: str, other: str
) -> None:
    """POST /v1/jobs/{id}/cancel of another tenant's job is a 404 and changes nothing."""
    job_id = queued_job(teams[owner].tenant)
    response = teams[other].client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "job_not_found"
    assert sql("SELECT status FROM jobs WHERE id = :j", j=job_id) == [("queued",)]
    mine = teams[owner].client.post(f"/v1/jobs/{job_id}/cancel")
    assert (mine.status_code, mine.json()["status"]) == (200, "cancelled")


@pytest.mark.parametrize(("owner", "other"), DIRECTIONS)
def test_other_tenants_conversation_cannot_be_continued(
    teams: dict[str, Team], owner: str, other: str
) -> None:
    """A turn for another tenant's conversation is the 404 of an unknown conversation."""
    conversation_id = conversation_of(queued_job(teams[owner].tenant))
    before = sql("SELECT count(*) FROM jobs WHERE conversation_id = :c", c=conversation_id)
    for body in (
        {"model": "m", "messages": USER, "conversation_id": conversation_id},
        {"model": "m", "messages": USER, "conversation_id": conversation_id,
         "tenant": teams[other].tenant},
    ):  # fmt: skip
        response = teams[other].client.post("/v1/jobs", json=body)
        assert response.status_code == 404
        assert response.json()["error"] == {
            "type": "conversation_not_found",
            "message": f"conversation_id: no conversation {conversation_id}",
            "field": "conversation_id",
        }
    assert sql("SELECT count(*) FROM jobs WHERE conversation_id = :c", c=conversation_id) == before


@pytest.mark.parametrize(("owner", "other"), DIRECTIONS)
def test_body_tenant_outside_the_key_is_forbidden(
    teams: dict[str, Team], owner: str, other: str
) -> None:
    """POST /v1/jobs naming another tenant is a 403 and writes nothing."""
    before = sql("SELECT count(*) FROM jobs")
    response = teams[other].client.post(
        "/v1/jobs", json={"model": "m", "messages": USER, "tenant": teams[owner].tenant}
    )
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "forbidden"
    assert response.json()["error"]["field"] == "tenant"
    assert sql("SELECT count(*) FROM jobs") == before


@pytest.mark.parametrize(("owner", "other"), DIRECTIONS)
def test_idempotency_keys_never_reveal_another_tenants_job(
    teams: dict[str, Team], owner: str, other: str
) -> None:
    """The same idempotency key used by two tenants makes two jobs; no 409 names the other's."""
    key = uuid.uuid4().hex
    first = teams[owner].client.post(
        "/v1/jobs", json={"model": "m", "messages": USER, "idempotency_key": key}
    )
    second = teams[other].client.post(
        "/v1/jobs",
        json={"model": "m", "messages": [{"role": "user", "content": "else"}]},
        headers={"Idempotency-Key": key},
    )
    assert (first.status_code, second.status_code) == (202, 202)
    assert first.json()["job_id"] != second.json()["job_id"]
    assert first.json()["job_id"] not in second.text
    guessed = teams[other].client.post(
        "/v1/jobs",
        json={"model": "m", "messages": USER, "tenant": teams[owner].tenant},
        headers={"Idempotency-Key": key},
    )
    assert guessed.status_code == 403
    assert first.json()["job_id"] not in guessed.text


@pytest.mark.parametrize(("owner", "other"), DIRECTIONS)
def test_list_shows_only_the_keys_tenants(teams: dict[str, Team], owner: str, other: str) -> None:
    """GET /v1/jobs lists the key's tenants' jobs only; filtering on another tenant is a 403."""
    mine = queued_job(teams[owner].tenant)
    theirs = queued_job(teams[other].tenant)
    listed = teams[owner].client.get("/v1/jobs", params={"limit": 200})
    assert listed.status_code == 200
    ids = {job["job_id"] for job in listed.json()["jobs"]}
    assert mine in ids and theirs not in ids
    assert {job["tenant"] for job in listed.json()["jobs"]} == {teams[owner].tenant}
    refused = teams[owner].client.get("/v1/jobs", params={"tenant": teams[other].tenant})
    assert refused.status_code == 403


def test_one_tenant_key_fills_in_its_tenant_and_records_the_key(teams: dict[str, Team]) -> None:
    """Without `tenant` a one-tenant key's job gets that tenant, and created_by names the key."""
    response = teams["a"].client.post("/v1/jobs", json={"model": "m", "messages": USER})
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    assert response.json()["tenant"] == A
    assert sql("SELECT tenant, created_by FROM jobs WHERE id = :j", j=job_id) == [
        (A, teams["a"].key_id)
    ]


def test_multi_tenant_key_acts_for_each_and_must_name_one(server: Any) -> None:
    """A key bound to two tenants reads both, and must say which tenant a new job is for."""
    record = create_key("--tenant", A, "--tenant", B)
    assert record["tenants"] == sorted([A, B])
    jobs = [queued_job(A), queued_job(B)]
    with _client(server, record["key"]) as client:
        for job_id in jobs:
            assert client.get(f"/v1/jobs/{job_id}").status_code == 200
        missing = client.post("/v1/jobs", json={"model": "m", "messages": USER})
        assert missing.status_code == 422
        assert missing.json()["error"]["field"] == "tenant"
        named = client.post("/v1/jobs", json={"model": "m", "messages": USER, "tenant": B})
        assert (named.status_code, named.json()["tenant"]) == (202, B)


def test_admin_keys_and_env_tokens_see_every_tenant(
    teams: dict[str, Team], admin: httpx.Client, server: Any
) -> None:
    """EZQ_API_TOKENS tokens and --admin keys read and list every tenant's jobs."""
    jobs = [queued_job(A), queued_job(B)]
    record = create_key("--admin", "--name", "ops")
    assert record["admin"] is True and record["tenants"] is None
    with _client(server, record["key"]) as admin_key:
        for client in (admin, admin_key):
            for job_id in jobs:
                assert client.get(f"/v1/jobs/{job_id}").status_code == 200
            listed = {j["job_id"] for j in client.get("/v1/jobs?limit=200").json()["jobs"]}
            assert set(jobs) <= listed
    made = admin.post("/v1/jobs", json={"model": "m", "messages": USER, "tenant": A})
    assert sql("SELECT created_by FROM jobs WHERE id = :j", j=made.json()["job_id"]) == [("env:1",)]


def test_revoked_and_expired_keys_stop_at_once(server: Any) -> None:
    """`ezq keys revoke ID` and an expiry in the past give 401 on the next request."""
    job_id = queued_job(A)
    for how in ("revoke", "expire"):
        record = create_key("--tenant", A, "--expires", "2999-01-01")
        with _client(server, record["key"]) as client:
            assert client.get(f"/v1/jobs/{job_id}").status_code == 200
            if how == "revoke":
                done = run_ezq("keys", "revoke", record["id"])
                assert done.returncode == 0, done.stderr
            else:
                sql_exec("UPDATE api_keys SET expires_at = now() WHERE id = :k", k=record["id"])
            response = client.get(f"/v1/jobs/{job_id}")
            assert response.status_code == 401
            assert response.json()["error"]["type"] == "unauthorized"


def sql_exec(statement: str, **params: Any) -> None:
    from sqlalchemy import text

    with transaction() as session:
        session.execute(text(statement), params)


def test_keys_are_shown_once_and_stored_only_as_hashes() -> None:
    """`ezq keys create` prints an ezq_ key once; list shows no secret; no table holds it."""
    done = run_ezq("keys", "create", "--tenant", A, "--name", "shown once")
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    assert key.startswith("ezq_") and len(key) > 40 and "\n" not in key
    assert "created key" in done.stderr and key not in done.stderr
    listed = run_ezq("keys", "list", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    assert key not in listed.stdout
    row = next(r for r in json.loads(listed.stdout) if r["prefix"] == key[:12])
    assert (row["name"], row["tenants"], row["status"]) == ("shown once", [A], "active")
    assert places_holding(key) == []
    table = run_ezq("keys", "list")
    assert table.returncode == 0 and row["id"] in table.stdout and key not in table.stdout


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ([], "--tenant: give at least one tenant, or --admin"),
        (["--admin", "--tenant", "x"], "--admin: an admin key acts for every tenant"),
        (["--tenant", "x", "--expires", "2001-01-01"], "--expires: 2001-01-01 is not in the"),
        (["--tenant", " "], "--tenant: must not be empty"),
    ],
)
def test_bad_key_requests_fail_in_one_line(args: list[str], error: str) -> None:
    """Keys without a scope, with two scopes, already expired or unnamed are refused."""
    done = run_ezq("keys", "create", *args)
    assert done.returncode == 1
    assert done.stderr.startswith(f"ezq: error: {error}")
    assert "ezq_" not in done.stdout


def test_revoking_an_unknown_key_is_an_error() -> None:
    """`ezq keys revoke` of an id that does not exist fails in one line."""
    unknown = str(uuid.uuid4())
    done = run_ezq("keys", "revoke", unknown)
    assert done.returncode == 1
    assert done.stderr.strip() == f"ezq: error: no API key {unknown}"


def ended_job(tenant: str) -> str:
    """A failed job of ``tenant``, which replay accepts."""
    job_id = queued_job(tenant)
    sql_exec("UPDATE jobs SET status = 'failed', error_type = 'timeout' WHERE id = :j", j=job_id)
    return job_id


@pytest.mark.parametrize(("owner", "other"), DIRECTIONS)
def test_other_tenants_jobs_cannot_be_replayed(
    teams: dict[str, Team], owner: str, other: str
) -> None:
    """Replaying another tenant's job is a 404; a filtered replay only ever sees the key's."""
    job_id = ended_job(teams[owner].tenant)
    one = teams[other].client.post(f"/v1/jobs/{job_id}/replay")
    assert one.status_code == 404
    assert one.json()["error"]["type"] == "job_not_found"
    by_ids = teams[other].client.post("/v1/jobs/replay", json={"job_ids": [job_id]})
    assert by_ids.status_code in (200, 202), by_ids.text
    # Skipped exactly as an id no job has is: the caller learns nothing it did not send.
    unknown = str(uuid.uuid4())
    never = teams[other].client.post("/v1/jobs/replay", json={"job_ids": [unknown]})
    assert by_ids.json()["replays"] == never.json()["replays"] == []
    (skip,) = by_ids.json()["skipped"]
    assert skip == {
        "job_id": job_id,
        "reason": "not_found",
        "message": f"no job {job_id} among those selected",
    }
    assert never.json()["skipped"] == [
        {
            "job_id": unknown,
            "reason": "not_found",
            "message": f"no job {unknown} among those selected",
        }
    ]
    named = teams[other].client.post(
        "/v1/jobs/replay", json={"tenant": teams[owner].tenant, "dry_run": True}
    )
    assert named.status_code == 403
    assert sql("SELECT count(*) FROM jobs WHERE replay_of = :j", j=job_id) == [(0,)]
    mine = teams[owner].client.post(f"/v1/jobs/{job_id}/replay")
    assert (mine.status_code, mine.json()["replay_of"]) == (202, job_id)


def test_replays_record_the_key_that_asked(teams: dict[str, Team]) -> None:
    """A replay over HTTP, of one job or by filters, names the key that asked for it in
    created_by, as any job made over HTTP does; it keeps the original's priority."""
    one, many = ended_job(A), ended_job(A)
    sql_exec("UPDATE jobs SET priority = 2 WHERE id = :j", j=one)
    single = teams["a"].client.post(f"/v1/jobs/{one}/replay")
    assert single.status_code == 202, single.text
    filtered = teams["a"].client.post("/v1/jobs/replay", json={"job_ids": [many]})
    assert filtered.status_code == 202, filtered.text
    rows = sql(
        "SELECT replay_of::text, created_by, priority FROM jobs WHERE replay_of IN (:a, :b)"
        " ORDER BY replay_of = :a DESC",
        a=one,
        b=many,
    )
    assert rows == [(one, teams["a"].key_id, 2), (many, teams["a"].key_id, 5)]


def test_idempotency_key_in_header_and_body_must_agree(teams: dict[str, Team]) -> None:
    """Two different keys in one request are a 422 (either alone would name a job, and a
    silent choice made a second paid job); the same key twice is one key; a header that
    is not ASCII is refused rather than stored garbled. Nothing is written."""
    client = teams["a"].client
    body = {"model": "m", "messages": USER, "idempotency_key": "body-" + uuid.uuid4().hex}
    before = sql("SELECT count(*) FROM jobs")
    differ = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "hdr-x"})
    assert differ.status_code == 422, differ.text
    assert differ.json()["error"]["field"] == "Idempotency-Key"
    garbled = client.post(
        "/v1/jobs",
        json={"model": "m", "messages": USER},
        headers=[(b"Idempotency-Key", b"\xff\xfekey")],
    )
    assert garbled.status_code == 422, garbled.text
    assert garbled.json()["error"]["field"] == "Idempotency-Key"
    assert sql("SELECT count(*) FROM jobs") == before
    agree = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": body["idempotency_key"]})
    again = client.post("/v1/jobs", json=body)
    assert agree.status_code == again.status_code == 202, agree.text
    assert agree.json()["job_id"] == again.json()["job_id"]


@pytest.fixture
def running_job(teams: dict[str, Team]) -> Iterator[str]:
    """A job of team A's that a worker (``bench-host:4242:w1``) is running, ended after."""
    job_id = queued_job(teams["a"].tenant)
    with transaction() as session:
        session.execute(
            text(
                "UPDATE jobs SET status = 'running', attempts = 1, started_at = now(),"
                " lease_holder = 'bench-host:4242:w1',"
                " lease_expires_at = now() + interval '1 hour' WHERE id = :j"
            ),
            {"j": job_id},
        )
    yield job_id
    with transaction() as session:  # no later sweep may take it for a job gone missing
        session.execute(
            text(
                "UPDATE jobs SET status = 'cancelled', finished_at = now(),"
                " lease_holder = NULL, lease_expires_at = NULL WHERE id = :j"
            ),
            {"j": job_id},
        )


def test_a_tenant_sees_its_running_job_s_lease_but_not_the_worker_holding_it(
    teams: dict[str, Team], admin: httpx.Client, running_job: str
) -> None:
    """A tenant key sees until when a running job's lease holds, not the worker's host and
    process id; an admin key sees both, as ``ezq show`` does."""
    own = teams["a"].client
    seen = [own.get(f"/v1/jobs/{running_job}").json()]
    listed = own.get("/v1/jobs", params={"status": "running", "limit": 200}).json()["jobs"]
    seen += [job for job in listed if job["job_id"] == running_job]
    assert len(seen) == 2, listed
    for view in seen:
        assert view["status"] == "running"
        assert set(view["lease"]) == {"expires_at"}, view["lease"]
    as_admin = admin.get(f"/v1/jobs/{running_job}").json()["lease"]
    assert as_admin["holder"] == "bench-host:4242:w1"
    assert as_admin["expires_at"] == seen[0]["lease"]["expires_at"]
    shown = run_ezq("show", running_job)
    assert json.loads(shown.stdout)["lease"]["holder"] == "bench-host:4242:w1", shown.stderr

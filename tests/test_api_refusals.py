"""Refusals over HTTP and in ``ezq keys``: trailing slashes, over-long integers, bad
cursors and bodies, pasted key prefixes and tenant names, each answered in the envelope
(or one CLI line) naming what is at fault, and nothing written."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from service.errors import InvalidRequest
from service.validation import checked_tenant
from tests.conftest import run_ezq, sql

TOKEN = "refusals-token-" + uuid.uuid4().hex
USER = [{"role": "user", "content": "refusals"}]
DIGITS = sys.get_int_max_str_digits()
LONG = "7" * (DIGITS + 700)
LINE = {
    "custom_id": "a",
    "method": "POST",
    "url": "/v1/chat/completions",
    "body": {"model": "m", "messages": USER},
}


@pytest.fixture(scope="module")
def server(api_server_factory: Any) -> Any:
    return api_server_factory(EZQ_API_TOKENS=TOKEN)


@pytest.fixture(scope="module")
def api(server: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


def error_of(response: httpx.Response, status: int, kind: str = "invalid_request") -> Any:
    """The envelope's error, checked to be one."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["type"] == kind, body
    return body["error"]


def counts() -> tuple[Any, ...]:
    return sql(
        "SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM batch_files),"
        " (SELECT count(*) FROM batches), (SELECT count(*) FROM flow_limits),"
        " (SELECT count(*) FROM flow_budgets), (SELECT count(*) FROM api_keys)"
    )[0]


# --- 1. trailing slashes --------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("keyed", [True, False])
@pytest.mark.parametrize("path", ["/v1/jobs/", "/v1/batches/", f"/v1/jobs/{uuid.uuid4()}/"])
def test_trailing_slash_is_an_unknown_route(
    server: Any, method: str, keyed: bool, path: str
) -> None:
    """`/v1/jobs/` is a 404 in the envelope like any unknown route, with or without a key:
    never Starlette's empty 307 to a Location built from the Host header."""
    headers = {"Authorization": f"Bearer {TOKEN}"} if keyed else {}
    headers["Host"] = "evil.example"
    response = httpx.request(
        method, f"{server.url}{path}", headers=headers, json={}, follow_redirects=False
    )
    error = error_of(response, 404, "not_found")
    assert error["message"] == f"no route {path}"
    assert "location" not in response.headers
    unknown = httpx.request(method, f"{server.url}/v1/nowhere", headers=headers, json={})
    assert error_of(unknown, 404, "not_found")["message"] == "no route /v1/nowhere"


# --- 2. integers Python will not convert ----------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/v1/jobs", f'{{"model": "m", "messages": [], "priority": {LONG}}}', "priority"),
        (
            "POST",
            "/v1/jobs",
            f'{{"model": "m", "messages": [{{"role": "user", "content": -{LONG}}}]}}',
            "messages[0].content",
        ),
        ("POST", "/v1/jobs", f'{{"metadata": {{"n": [1, {LONG}, {LONG}]}}}}', "metadata.n[1]"),
        ("POST", "/v1/jobs/replay", f'{{"job_ids": [], "limit": {LONG}}}', "limit"),
        ("PUT", "/v1/limits", f'{{"tenant": "t", "max_concurrent": {LONG}}}', "max_concurrent"),
        ("PUT", "/v1/budgets", f'{{"tenant": "t", "monthly_usd": {LONG}}}', "monthly_usd"),
        ("POST", "/v1/batches", f'{{"input_file_id": "f", "priority": {LONG}}}', "priority"),
        ("POST", f"/v1/jobs/{uuid.uuid4()}/replay", f'{{"n": {LONG}}}', "n"),
    ],
)
def test_an_integer_too_long_to_convert_is_named(
    api: httpx.Client, method: str, path: str, body: str, field: str
) -> None:
    """An integer with more digits than Python converts is a 422 naming its path and the
    limit, not Python's advice about sys.set_int_max_str_digits(); nothing is written."""
    before = counts()
    response = api.request(
        method, path, content=body.encode(), headers={"content-type": "application/json"}
    )
    error = error_of(response, 422)
    assert error["field"] == field
    assert error["message"] == f"{field}: integer too long: more than {DIGITS} digits"
    assert counts() == before


def test_the_largest_convertible_integer_is_parsed(api: httpx.Client) -> None:
    """An integer at the limit is an ordinary (too large) priority, not a parse error."""
    body = f'{{"model": "m", "messages": {json.dumps(USER)}, "priority": {"9" * DIGITS}}}'
    response = api.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    error = error_of(response, 422)
    assert error["field"] == "priority" and "between 0 and 9" in error["message"]


# --- 3. the batch list's cursor -------------------------------------------------------


@pytest.mark.parametrize("after", ["nope", "%00", "batch_", "file-" + "0" * 32])
def test_a_malformed_batch_cursor_is_a_422(api: httpx.Client, after: str) -> None:
    """`after` that is not a batch id is refused, like `cursor` of GET /v1/jobs, rather
    than silently answering the first page again."""
    error = error_of(api.get(f"/v1/batches?after={after}"), 422)
    assert error["field"] == "after"
    assert error["message"].startswith("after: is not a batch id")


def test_a_well_formed_cursor_of_no_batch_is_a_422(api: httpx.Client) -> None:
    """A batch id that names no batch is refused too: the first page again would send a
    paging client round in a loop (paging after a real batch: tests/test_batches.py)."""
    unknown = f"batch_{uuid.uuid4().hex}"
    error = error_of(api.get(f"/v1/batches?after={unknown}&limit=1"), 422)
    assert (error["field"], error["message"]) == (
        "after",
        f"after: no batch {unknown} to page after",
    )


# --- 4. bodies a route does not take --------------------------------------------------


@pytest.mark.parametrize(
    ("content", "field"),
    [
        (b'{"tenant": "t"}', "tenant"),
        (b'{"dry_run": true, "zzz": 1}', "dry_run"),
        (b'{"model": ', "body"),
        (b"[1]", "body"),
        (b"null", "body"),
    ],
)
def test_replaying_one_job_refuses_a_body(api: httpx.Client, content: bytes, field: str) -> None:
    """POST /v1/jobs/{id}/replay takes no body: a malformed one or any field is a 422."""
    before = counts()
    response = api.post(
        f"/v1/jobs/{uuid.uuid4()}/replay",
        content=content,
        headers={"content-type": "application/json"},
    )
    error = error_of(response, 422)
    assert error["field"] == field
    if field != "body":
        assert error["message"] == f"{field}: is not a known field (this route takes no body)"
    assert counts() == before


@pytest.mark.parametrize("content", [None, b"", b"{}", b" {} "])
def test_replaying_one_job_takes_no_body_or_an_empty_object(
    api: httpx.Client, content: bytes | None
) -> None:
    """No body, or `{}`, goes on to the job (here: none, so 404)."""
    headers = {"content-type": "application/json"} if content is not None else {}
    response = api.post(f"/v1/jobs/{uuid.uuid4()}/replay", content=content, headers=headers)
    error_of(response, 404, "job_not_found")


def test_a_body_is_checked_after_the_key(server: Any) -> None:
    """Without a key a bad body is a 401: only a caller learns the rules."""
    for path in (f"/v1/jobs/{uuid.uuid4()}/replay", "/v1/jobs/replay"):
        response = httpx.post(f"{server.url}{path}", content=b'{"x": ')
        error_of(response, 401, "unauthorized")


@pytest.mark.parametrize("extra", ["extra", "expires_after[when]", "Purpose"])
def test_an_upload_with_an_unknown_field_is_refused(api: httpx.Client, extra: str) -> None:
    """POST /v1/files takes OpenAI's `file` and `purpose` (and ezq's `tenant`): any other
    multipart field is a 422 naming it, and nothing is stored."""
    before = counts()
    response = api.post(
        "/v1/files",
        files={"file": ("in.jsonl", json.dumps(LINE).encode() + b"\n")},
        data={"purpose": "batch", "tenant": "t", extra: "1"},
    )
    error = error_of(response, 422)
    assert error["field"] == extra
    assert error["message"].startswith(f"{extra}: is not a known field")
    assert counts() == before


def test_an_upload_with_the_known_fields_is_stored(api: httpx.Client) -> None:
    response = api.post(
        "/v1/files",
        files={"file": ("in.jsonl", json.dumps(LINE).encode() + b"\n")},
        data={"purpose": "batch", "tenant": "t"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["purpose"] == "batch"


# --- 5. revoking by the prefix `ezq keys list` shows ----------------------------------


@pytest.mark.parametrize("ellipsis", ["…", "...", ""])
def test_keys_revoke_takes_the_prefix_as_listed(ellipsis: str) -> None:
    """The PREFIX column (`ezq_Kqu9TDrQ…`) pasted as is, or with `...`, revokes the key."""
    created = run_ezq("keys", "create", "--tenant", "t", "--format", "json")
    assert created.returncode == 0, created.stderr
    record = json.loads(created.stdout)
    table = run_ezq("keys", "list", env={"COLUMNS": "200"})
    assert f"{record['prefix']}…" in table.stdout
    done = run_ezq("keys", "revoke", record["prefix"] + ellipsis)
    assert done.returncode == 0, done.stderr
    assert f"revoked key {record['id']}" in done.stderr
    (revoked,) = sql("SELECT revoked_at IS NOT NULL FROM api_keys WHERE id = :k", k=record["id"])
    assert revoked == (True,)


def test_keys_revoke_of_an_unknown_prefix_says_what_it_takes() -> None:
    done = run_ezq("keys", "revoke", "ezq_NoSuchKey…")
    assert done.returncode == 1
    assert done.stderr.startswith("ezq: error: no API key ezq_NoSuchKey…")
    assert "id" in done.stderr and "prefix" in done.stderr and "ezq keys list" in done.stderr


# --- 6. tenant names ------------------------------------------------------------------

BAD_TENANTS = [
    ("x y\n", "must not contain control characters"),
    ("a\tb", "must not contain control characters"),
    ("a\x7fb", "must not contain control characters"),
    ("a\x85b", "must not contain control characters"),
]
# Spaces at the edges are taken as given: keys and jobs stored before the check may hold
# such names and keep working.
GOOD_TENANTS = ["acme", "acme-eu_2.prod", "acme corp", "Ünïcode 租户", "a/b@c:d", "*x", "acme "]


@pytest.mark.parametrize(("tenant", "reason"), BAD_TENANTS)
def test_checked_tenant_refuses_control_characters(tenant: str, reason: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        checked_tenant(tenant)
    assert refused.value.field == "tenant"
    assert refused.value.reason.startswith(reason)
    with pytest.raises(InvalidRequest) as named:
        checked_tenant(tenant, "--tenant")
    assert named.value.field == "--tenant"


@pytest.mark.parametrize("tenant", GOOD_TENANTS)
def test_checked_tenant_keeps_every_tenant_it_took(tenant: str) -> None:
    assert checked_tenant(tenant) == tenant


@pytest.mark.parametrize(("tenant", "reason"), BAD_TENANTS)
def test_bad_tenants_are_refused_everywhere_over_http(
    api: httpx.Client, tenant: str, reason: str
) -> None:
    """A job, a limit, a budget and a batch file all refuse such a tenant, naming it."""
    before = counts()
    answers = [
        api.post("/v1/jobs", json={"model": "m", "messages": USER, "tenant": tenant}),
        api.put("/v1/limits", json={"tenant": tenant, "max_concurrent": 1}),
        api.put("/v1/budgets", json={"tenant": tenant, "monthly_usd": 1}),
        api.post(
            "/v1/files",
            files={"file": ("in.jsonl", json.dumps(LINE).encode() + b"\n")},
            data={"purpose": "batch", "tenant": tenant},
        ),
    ]
    for answer in answers:
        error = error_of(answer, 422)
        assert error["field"] == "tenant", answer.request.url
        assert error["message"].startswith(f"tenant: {reason}")
    assert counts() == before


def test_good_tenants_are_taken_over_http(api: httpx.Client) -> None:
    tenant = f"acme corp {uuid.uuid4().hex[:6]}"
    created = api.post("/v1/jobs", json={"model": "m", "messages": USER, "tenant": tenant})
    assert created.status_code == 202, created.text
    assert created.json()["tenant"] == tenant
    limit = api.put("/v1/limits", json={"tenant": tenant, "max_concurrent": 1})
    assert limit.status_code == 200, limit.text
    assert api.delete("/v1/limits", params={"tenant": tenant}).status_code == 204
    # An empty tenant still means "any tenant" in a limit's scope.
    any_tenant = api.put("/v1/limits", json={"tenant": "", "model": tenant, "max_concurrent": 2})
    assert any_tenant.status_code == 200, any_tenant.text
    assert api.delete("/v1/limits", params={"model": tenant}).status_code == 204


@pytest.mark.parametrize(("tenant", "reason"), BAD_TENANTS)
def test_keys_create_refuses_bad_tenants(tenant: str, reason: str) -> None:
    before = counts()
    done = run_ezq("keys", "create", "--tenant", "ok", "--tenant", tenant)
    assert done.returncode == 1
    assert done.stderr.startswith(f"ezq: error: --tenant: {reason}")
    assert "ezq_" not in done.stdout
    assert counts() == before


def test_keys_create_takes_a_tenant_with_spaces_inside() -> None:
    done = run_ezq("keys", "create", "--tenant", "acme corp", "--format", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tenants"] == ["acme corp"]

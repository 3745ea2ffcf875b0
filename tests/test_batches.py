"""Batches through the official openai SDK against a real ``ezq api``, a real worker and
the fake gateway: files, batches, results that match the jobs in Postgres, cancel, bad
files, tenant isolation."""

from __future__ import annotations

import base64
import json
import secrets
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from service.fake_gateway import Fault
from service.webhooks.testing import Receiver
from tests.conftest import run_ezq, sql

ADMIN_TOKEN = "batch-admin-" + uuid.uuid4().hex
TENANT_A, TENANT_B = "batch-a-" + uuid.uuid4().hex[:6], "batch-b-" + uuid.uuid4().hex[:6]


def wait_until(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """Poll ``check`` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not after {timeout}s"
        time.sleep(0.1)


def create_key(tenant: str) -> str:
    done = run_ezq("keys", "create", "--tenant", tenant, "--format", "json")
    assert done.returncode == 0, done.stderr
    key: str = json.loads(done.stdout)["key"]
    return key


def line(custom_id: str, prompt: str, **params: Any) -> dict[str, Any]:
    body = {"model": "glm-5.1", "messages": [{"role": "user", "content": prompt}], **params}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(item).encode() + b"\n" for item in lines)


@pytest.fixture(scope="module")
def server(api_server_factory: Any, worker: Any) -> Any:
    return api_server_factory(EZQ_API_TOKENS=ADMIN_TOKEN)


@pytest.fixture(scope="module")
def keys(server: Any) -> dict[str, str]:
    return {"a": create_key(TENANT_A), "b": create_key(TENANT_B)}


def sdk(server: Any, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


def ended(client: openai.OpenAI, batch_id: str, *statuses: str) -> Any:
    def check() -> Any:
        batch = client.batches.retrieve(batch_id)
        return batch if batch.status in statuses else None

    return wait_until(check, f"batch {batch_id} to reach {statuses}")


def lines_of(client: openai.OpenAI, file_id: str | None) -> dict[str, dict[str, Any]]:
    if file_id is None:
        return {}
    text = client.files.content(file_id).text
    parsed = [json.loads(item) for item in text.splitlines()]
    return {item["custom_id"]: item for item in parsed}


def test_sdk_runs_a_mixed_file_and_the_output_matches_postgres(
    server: Any, keys: dict[str, str], fake_gateway: Any
) -> None:
    """Successes, a 4xx line and a line retried after a 503 come back as output and error
    lines whose ids, replies, usage and errors are the jobs' rows in Postgres."""
    marker = uuid.uuid4().hex
    fake_gateway.add_faults(
        Fault(status=400, match=f"bad-{marker}"), Fault(status=503, match=f"retry-{marker}")
    )
    prompts = {
        "ok-1": f"ok one {marker}",
        "ok-2": f"ok two {marker}",
        "bad": f"bad-{marker}",
        "retried": f"retry-{marker}",
    }
    client = sdk(server, keys["a"])
    uploaded = client.files.create(
        file=("mixed.jsonl", jsonl([line(k, v) for k, v in prompts.items()])), purpose="batch"
    )
    assert (uploaded.purpose, uploaded.filename) == ("batch", "mixed.jsonl")
    assert client.files.retrieve(uploaded.id).bytes == uploaded.bytes
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"run": marker},
    )
    assert batch.status == "in_progress" and batch.request_counts.total == 4
    done = ended(client, batch.id, "completed")
    assert (done.request_counts.completed, done.request_counts.failed) == (3, 1)
    assert done.output_file_id and done.error_file_id and done.completed_at

    jobs = {
        row[0]: row
        for row in sql(
            "SELECT j.custom_id, j.id, j.status, j.attempts, j.error_type, j.error_status,"
            " j.tenant, j.metadata, m.content, u.prompt_tokens, u.completion_tokens,"
            " u.total_tokens FROM jobs j"
            " LEFT JOIN messages m ON m.job_id = j.id AND m.role = 'assistant'"
            " LEFT JOIN token_usage u ON u.job_id = j.id WHERE j.batch_id = :b",
            b=batch.id,
        )
    }
    assert set(jobs) == set(prompts)
    assert {row[6] for row in jobs.values()} == {TENANT_A}
    assert all(row[7] == {"run": marker} for row in jobs.values())
    assert jobs["retried"][2:4] == ("succeeded", 2)
    output = lines_of(client, done.output_file_id)
    assert set(output) == {"ok-1", "ok-2", "retried"}
    for custom_id, item in output.items():
        row = jobs[custom_id]
        assert row[2] == "succeeded"
        assert item["id"] == f"batch_req_{row[1].hex}" and item["error"] is None
        response = item["response"]
        assert response["status_code"] == 200
        body = response["body"]
        assert body["id"] == str(row[1]) and body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"] == row[8]
        usage = body["usage"]
        assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (
            row[9],
            row[10],
            row[11],
        )
    errors = lines_of(client, done.error_file_id)
    assert set(errors) == {"bad"}
    bad = jobs["bad"]
    assert bad[2:6] == ("failed", 1, "client_error", 400)
    assert errors["bad"]["error"]["code"] == "client_error"
    assert errors["bad"]["response"]["status_code"] == 400
    # Below interactive work (5) by default.
    assert sql("SELECT DISTINCT priority FROM jobs WHERE batch_id = :b", b=batch.id) == [(1,)]
    costs = sql("SELECT custom_id FROM job_costs WHERE batch_id = :b", b=batch.id)
    assert sorted(c for (c,) in costs) == sorted(prompts)
    assert client.batches.list(limit=100).data[0].id == batch.id
    # A result file is the caller's own, but not an input: named as such, not "no file".
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.batches.create(
            input_file_id=done.output_file_id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
    assert "purpose batch" in str(caught.value.body)


@pytest.mark.usefixtures("worker")  # another worker on the database, as in the whole suite
def test_cancel_stops_lines_not_started_and_keeps_finished_ones(
    api_server_factory: Any, keys: dict[str, str], fake_gateway: Any, worker_factory: Any
) -> None:
    """Cancelling while one line runs (and those before it have finished): the rest never
    run, and the output holds the finished lines and the running one once it ends."""
    queue = f"ezq-batch-{uuid.uuid4().hex[:8]}"
    own = api_server_factory(EZQ_API_TOKENS=ADMIN_TOKEN, EZQ_QUEUE=queue)
    worker_factory(env={"EZQ_QUEUE": queue})
    # One call at a time, in line order: the first ends, the slow one runs, the rest wait.
    # A flow limit, not a worker of one thread: every worker on the database is one pool,
    # and the session worker's sweep republishes lines left waiting onto its own queue
    # (then it ran them beside the slow one: five lines completed, none cancelled).
    limit = run_ezq("limits", "set", "--tenant", TENANT_A, "--concurrency", "1")
    assert limit.returncode == 0, limit.stderr
    try:
        _cancel_while_one_runs(own, keys, fake_gateway)
    finally:
        deleted = run_ezq("limits", "delete", "--tenant", TENANT_A)
        assert deleted.returncode == 0, deleted.stderr


def _cancel_while_one_runs(own: Any, keys: dict[str, str], fake_gateway: Any) -> None:
    marker = uuid.uuid4().hex
    # The first call is answered at once and the second one slowly, whichever lines they
    # are (equal lines are claimed about in line order, not exactly: a message keeps its
    # own line, and a call's end wakes the best few waiting lines, whose messages race).
    # About 2.7 s of stream (9 frames of 8 characters, 0.3 s apart): the cancel lands while
    # it runs; no wait comes near the read timeout (1.5 s) and the whole stays under the
    # attempt deadline (4 s) of the suite's workers, so the slow call is not retried.
    fake_gateway.add_faults(
        Fault(kind="normal", match=marker),
        Fault(kind="normal", match=marker, reply="slow word " * 7, chunk_delay=0.3),
    )
    names = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth"]
    client = sdk(own, keys["a"])
    uploaded = client.files.create(
        file=("cancel.jsonl", jsonl([line(n, f"{n} {marker}") for n in names])), purpose="batch"
    )
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )

    def statuses() -> dict[str, str]:
        rows = sql("SELECT custom_id, status FROM jobs WHERE batch_id = :b", b=batch.id)
        return {str(custom_id): str(status) for custom_id, status in rows}

    # The slow line is read once it runs and the line before it has recorded its end (its
    # call's slot is freed just before): one line finished, one running, and nothing else
    # starts while the slow one holds the tenant's one call.
    def slow_alone() -> dict[str, str] | None:
        now = statuses()
        running = [n for n, s in now.items() if s == "running"]
        finished = [n for n, s in now.items() if s == "succeeded"]
        return now if len(running) == 1 and len(finished) == 1 else None

    at_cancel = wait_until(slow_alone, "the slow line running after the first")
    (slow,) = {n for n, s in at_cancel.items() if s == "running"}
    finished = {n for n, s in at_cancel.items() if s == "succeeded"}
    waiting = {n for n, s in at_cancel.items() if s in ("queued", "retrying")}
    assert finished | waiting == set(names) - {slow} and len(waiting) == 6, at_cancel
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling"
    done = ended(client, batch.id, "cancelled")
    counts = (done.request_counts.completed, done.request_counts.failed)
    assert counts == (len(finished) + 1, len(waiting))
    assert set(lines_of(client, done.output_file_id)) == finished | {slow}
    errors = lines_of(client, done.error_file_id)
    assert set(errors) == waiting
    assert all(e["error"]["code"] == "batch_cancelled" for e in errors.values())
    sent = [str(r.body) for r in fake_gateway.requests if marker in str(r.body)]
    assert len(sent) == len(finished) + 1
    assert not [n for n in errors if any(f"{n} {marker}" in b for b in sent)]
    assert client.batches.cancel(batch.id).status == "cancelled"  # a no-op


def test_a_line_failing_after_its_batch_was_cancelled_is_not_retried(
    server: Any, keys: dict[str, str], fake_gateway: Any
) -> None:
    """A retry is a new call: a line whose call breaks (retryable) after its batch was
    cancelled ends cancelled, "after 1 attempt", and the gateway sees no second call."""
    marker = uuid.uuid4().hex
    # The stream breaks after about 2.75 s (before the suite's 4 s attempt deadline), on
    # every attempt the line would make: time for the cancel to land first.
    fake_gateway.add_faults(
        Fault(
            kind="drop_mid_stream",
            match=marker,
            reply="broken word " * 8,
            after_chunks=5,
            chunk_delay=0.55,
            times=5,
        )
    )
    client = sdk(server, keys["a"])
    uploaded = client.files.create(
        file=("stop.jsonl", jsonl([line("only", f"stop {marker}")])), purpose="batch"
    )
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    status = "SELECT status FROM jobs WHERE batch_id = :b"
    wait_until(lambda: sql(status, b=batch.id) == [("running",)], "the line's call under way")
    assert client.batches.cancel(batch.id).status == "cancelling"
    done = ended(client, batch.id, "cancelled")
    assert (done.request_counts.completed, done.request_counts.failed) == (0, 1)
    errors = lines_of(client, done.error_file_id)
    assert errors["only"]["error"] == {
        "code": "batch_cancelled",
        "message": "the request was cancelled after 1 attempt",
    }
    assert sql(
        "SELECT a.attempt, a.error_type FROM job_attempts a JOIN jobs j ON j.id = a.job_id"
        " WHERE j.batch_id = :b",
        b=batch.id,
    ) == [(1, "broken_stream")]
    assert len([r for r in fake_gateway.requests if marker in str(r.body)]) == 1


def test_bad_file_is_refused_with_line_numbers_and_nothing_written(
    server: Any, keys: dict[str, str]
) -> None:
    """Each bad line is named by number and field; no file row is written."""
    name = f"bad-{uuid.uuid4().hex}.jsonl"
    good = line("ok", "fine")
    bad_role = line("r", "x")
    bad_role["body"]["messages"][0]["role"] = "robot"
    surrogate_id = line("x\ud800y", "x")  # JSON's "\ud800": Postgres cannot store it
    surrogate_key = {**line("k", "x"), "extra\udfff": 1}
    content = (
        jsonl([good, bad_role])
        + b"{not json\n"
        + jsonl([line("ok", "duplicate id"), line("t", "x", temprature=1)])
        + jsonl([surrogate_id, surrogate_key])
    )
    client = sdk(server, keys["a"])
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.files.create(file=(name, content), purpose="batch")
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["type"] == "invalid_file"
    assert error["message"].startswith("line 2: body.messages[0].role:")
    assert [(e["line"], e["param"]) for e in error["errors"]] == [
        (2, "body.messages[0].role"),
        (3, "line"),
        (4, "custom_id"),
        (5, "body.temprature"),
        (6, "custom_id"),
        (7, "line"),
    ]
    assert "lone UTF-16 surrogate" in error["errors"][4]["message"]
    assert sql("SELECT count(*) FROM batch_files WHERE filename = :n", n=name) == [(0,)]


def test_another_tenant_cannot_see_or_cancel_the_batch_or_its_files(
    server: Any, keys: dict[str, str]
) -> None:
    """Tenant B's key gets 404 for tenant A's batch and files, exactly like unknown ids,
    and its cancel changes nothing."""
    owner, other = sdk(server, keys["a"]), sdk(server, keys["b"])
    uploaded = owner.files.create(
        file=("iso.jsonl", jsonl([line("one", f"iso {uuid.uuid4().hex}")])), purpose="batch"
    )
    batch = owner.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    calls: list[Callable[[], Any]] = [
        lambda: other.batches.retrieve(batch.id),
        lambda: other.batches.cancel(batch.id),
        lambda: other.files.retrieve(uploaded.id),
        lambda: other.files.content(uploaded.id),
        lambda: other.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        ),
    ]
    for call in calls:
        with pytest.raises(openai.NotFoundError) as caught:
            call()
        assert TENANT_A not in str(caught.value.body)
    assert batch.id not in [b.id for b in other.batches.list(limit=100).data]
    # As a page cursor, A's batch reads like an unknown id: both refused alike (not the
    # first page again, which would send a paging client round in a loop), while B's own
    # batch, made after A's, pages as it should.
    own = other.files.create(
        file=("own.jsonl", jsonl([line("own", f"own {uuid.uuid4().hex}")])), purpose="batch"
    )
    others = other.batches.create(
        input_file_id=own.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    unknown = "batch_" + uuid.uuid4().hex
    for cursor in (batch.id, unknown):
        with pytest.raises(openai.UnprocessableEntityError) as refused:
            other.batches.list(limit=100, after=cursor)
        error = refused.value.body
        assert isinstance(error, dict), error
        assert (error["field"], error["message"]) == (
            "after",
            f"after: no batch {cursor} to page after",
        )
    assert others.id in [b.id for b in other.batches.list(limit=100).data]
    # B pages after its own batch: what follows is B's older batches, none of A's.
    after_own = other.batches.list(limit=100, after=others.id).data
    assert others.id not in [b.id for b in after_own]
    assert {b.tenant for b in after_own} <= {TENANT_B}  # type: ignore[attr-defined]
    assert owner.batches.retrieve(batch.id).status in ("in_progress", "finalizing", "completed")


def test_one_signed_webhook_per_batch(
    api_server_factory: Any, keys: dict[str, str], worker_factory: Any, fake_gateway: Any
) -> None:
    """A batch with a callback_url sends exactly one signed batch.completed event, whose
    data is the finished batch, however many lines it has."""
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    queue = f"ezq-batch-hooks-{uuid.uuid4().hex[:8]}"
    env = {"EZQ_QUEUE": queue, "WEBHOOK_SECRET": secret}
    worker_factory(env={**env, "WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8"})
    own = api_server_factory(EZQ_API_TOKENS=ADMIN_TOKEN, **env)
    client = sdk(own, keys["a"])
    marker = uuid.uuid4().hex
    # Signed with the batch's tenant's own secret, which the operator hands to that tenant,
    # and not with WEBHOOK_SECRET itself.
    shown = run_ezq("webhooks", "secret", "--tenant", TENANT_A, env={"WEBHOOK_SECRET": secret})
    assert shown.returncode == 0, shown.stderr
    (own_secret,) = shown.stdout.split()
    with Receiver([own_secret, secret]) as receiver:
        uploaded = client.files.create(
            file=("hook.jsonl", jsonl([line(f"l{i}", f"hook {i} {marker}") for i in range(3)])),
            purpose="batch",
        )
        batch = client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            extra_body={"callback_url": receiver.url("/batch")},
        )
        [event] = receiver.wait_for(1, "/batch", timeout=60)
        assert event.verified_by == (0,)
        assert event.event["type"] == "batch.completed"
        data = event.event["data"]
        assert (data["id"], data["status"]) == (batch.id, "completed")
        assert data["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
        assert data["output_file_id"] == client.batches.retrieve(batch.id).output_file_id
    rows = sql("SELECT event_type, job_id FROM webhook_deliveries WHERE batch_id = :b", b=batch.id)
    assert rows == [("batch.completed", None)]


def test_cli_submits_follows_reads_and_refuses(
    keys: dict[str, str], worker: Any, tmp_path: Path
) -> None:
    """`ezq batch submit` prints the batch id, `status` and `results -o` follow it, a bad
    file is refused naming its line, and an ended batch cannot be cancelled."""
    marker = uuid.uuid4().hex
    path = tmp_path / "cli.jsonl"
    path.write_bytes(jsonl([line(f"c{i}", f"cli {i} {marker}") for i in range(3)]))
    done = run_ezq(
        "batch", "submit", str(path), "--tenant", TENANT_A, "--meta", f"run={marker}",
        "--priority", "7",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    batch_id = done.stdout.strip()

    def status() -> dict[str, Any]:
        shown = run_ezq("batch", "status", batch_id)
        assert shown.returncode == 0, shown.stderr
        view: dict[str, Any] = json.loads(shown.stdout)
        return view

    wait_until(lambda: status()["status"] == "completed", "the CLI batch")
    out = path.with_name("out.jsonl")
    read = run_ezq("batch", "results", batch_id, "-o", str(out))
    assert read.returncode == 0, read.stderr
    lines = [json.loads(item) for item in out.read_text().splitlines()]
    assert [item["custom_id"] for item in lines] == ["c0", "c1", "c2"]
    tenants = sql(
        "SELECT DISTINCT tenant, metadata, priority FROM jobs WHERE batch_id = :b", b=batch_id
    )
    assert tenants == [(TENANT_A, {"run": marker}, 7)]
    again = run_ezq("batch", "cancel", batch_id)
    assert again.returncode == 1 and "already ended (completed)" in again.stderr
    bad = path.with_name("bad.jsonl")
    bad.write_bytes(jsonl([line("x", "fine"), {"custom_id": "y"}]))
    refused = run_ezq("batch", "submit", str(bad))
    assert refused.returncode == 1
    assert "line 2: method: must be POST" in refused.stderr


def test_limits_and_a_file_that_no_longer_passes(
    api_server_factory: Any, server: Any, keys: dict[str, str]
) -> None:
    """Over EZQ_BATCH_MAX_FILE_BYTES an upload is refused (a 413 once the body passes the
    limit while streaming); a file stored under looser settings makes a batch `failed` with
    its line numbers, and no job is written."""
    strict = api_server_factory(
        EZQ_API_TOKENS=ADMIN_TOKEN, EZQ_MAX_REQUEST_BYTES="1000", EZQ_BATCH_MAX_FILE_BYTES="5000"
    )
    tight = sdk(strict, keys["a"])
    big = jsonl([line(f"b{i}", "x" * 90) for i in range(1000)])  # ~150 KB
    with pytest.raises(openai.APIStatusError) as caught:
        tight.files.create(file=("big.jsonl", big), purpose="batch")
    assert caught.value.status_code == 413
    medium = jsonl([line(f"m{i}", "x" * 90) for i in range(50)])  # ~7.5 KB
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        tight.files.create(file=("medium.jsonl", medium), purpose="batch")
    assert "the limit is 5000" in str(refused.value.body)

    long_prompt = "y" * 2000
    stored = sdk(server, keys["a"]).files.create(
        file=("long.jsonl", jsonl([line("short", "fine"), line("long", long_prompt)])),
        purpose="batch",
    )
    batch = tight.batches.create(
        input_file_id=stored.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status == "failed" and batch.failed_at
    with pytest.raises(openai.UnprocessableEntityError) as bad_priority:
        tight.batches.create(
            input_file_id=stored.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            extra_body={"priority": 12},
        )
    assert "priority: must be between 0 and 9" in str(bad_priority.value.body)
    assert batch.errors is not None and batch.errors.data
    error = batch.errors.data[0]
    assert (error.line, error.param) == (2, "body.messages")
    assert "the limit is 1000 bytes" in (error.message or "")
    assert sql("SELECT count(*) FROM jobs WHERE batch_id = :b", b=batch.id) == [(0,)]
    # No line ran: none is counted (the file's two lines stay in batches.total).
    counts = tight.batches.retrieve(batch.id).request_counts
    assert counts is not None
    assert (counts.total, counts.completed, counts.failed) == (0, 0, 0)
    assert sql("SELECT total FROM batches WHERE id = :b", b=batch.id) == [(2,)]


def test_a_cancelled_line_that_ran_says_after_how_many_attempts() -> None:
    """A line cancelled while it waited for a retry did run: its error line says how many
    attempts it had, not "cancelled before it ran"."""
    from types import SimpleNamespace

    from service.batches.results import result_line

    def cancelled(attempts: int) -> dict[str, Any]:
        row = SimpleNamespace(id=uuid.uuid4(), custom_id="c", status="cancelled", attempts=attempts)
        return dict(result_line(row)["error"])  # type: ignore[arg-type]

    assert cancelled(0) == {
        "code": "batch_cancelled",
        "message": "the request was cancelled before it ran",
    }
    assert cancelled(1)["message"] == "the request was cancelled after 1 attempt"
    assert cancelled(3) == {
        "code": "batch_cancelled",
        "message": "the request was cancelled after 3 attempts",
    }


def test_expiry_fields_the_sdk_sends_are_checked_and_taken(
    server: Any, keys: dict[str, str], fake_gateway: Any
) -> None:
    """`files.create(expires_after=…)` and `batches.create(output_expires_after=…)` work as
    with OpenAI (ezq keeps files until `ezq purge`); a value OpenAI refuses is a 422 naming
    it, and a refused upload stores nothing."""
    client = sdk(server, keys["a"])
    expiry = {"anchor": "created_at", "seconds": 86400}
    marker = uuid.uuid4().hex
    # Its one line streams for about 2.7 s, so that the batch is still running when it is
    # cancelled (answered at once, the line ran and the sweep completed the batch first).
    fake_gateway.add_faults(
        Fault(kind="normal", match=marker, reply="slow word " * 7, chunk_delay=0.3)
    )
    uploaded = client.files.create(
        file=("expiring.jsonl", jsonl([line("e1", f"expiring {marker}")])),
        purpose="batch",
        expires_after=expiry,  # type: ignore[arg-type]
    )
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        output_expires_after=expiry,  # type: ignore[arg-type]
    )
    assert batch.status == "in_progress"
    client.batches.cancel(batch.id)

    # Counted by its own name: the cancelled batch's output and error files may be written
    # meanwhile.
    short = f"short-{uuid.uuid4().hex}.jsonl"
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        client.files.create(
            file=(short, jsonl([line("e2", "short")])),
            purpose="batch",
            expires_after={"anchor": "created_at", "seconds": 60},  # type: ignore[arg-type]
        )
    assert refused.value.body["field"] == "expires_after.seconds"  # type: ignore[index]
    assert sql("SELECT count(*) FROM batch_files WHERE filename = :n", n=short) == [(0,)]
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            output_expires_after={"anchor": "last_active_at", "seconds": 3600},  # type: ignore[arg-type]
        )
    assert refused.value.body["field"] == "output_expires_after.anchor"  # type: ignore[index]

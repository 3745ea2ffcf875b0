"""Live tokens: `GET /v1/jobs/{id}/events`, `stream_job` and `ezq enqueue --follow` against a
real `ezq api`, a real worker and the fake gateway answering slowly, chunk by chunk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis

from service.fake_gateway import Fault
from service.live.events import final_text, stream_key
from service.producer import get_job
from tests.conftest import API_KEY, REDIS_URL, free_port, run_ezq, sql, wait_for_job
from tests.test_faults import wait_until

ADMIN_TOKEN = "live-admin-" + uuid.uuid4().hex
TENANT, OTHER = "live-" + uuid.uuid4().hex[:6], "other-" + uuid.uuid4().hex[:6]
MODEL = "glm-5.1"
# 8 characters a chunk (the fake's default): 16 chunks.
REPLY = "".join(f"word{i:02d}, " for i in range(16))
ENDED = ("succeeded", "failed", "cancelled")


@dataclass
class Event:
    id: str
    type: str
    data: dict[str, Any]
    raw: str


def create_key(tenant: str) -> str:
    done = run_ezq("keys", "create", "--tenant", tenant, "--format", "json")
    assert done.returncode == 0, done.stderr
    key: str = json.loads(done.stdout)["key"]
    return key


@pytest.fixture(scope="module")
def server(api_server_factory: Any, worker: Any) -> Any:
    return api_server_factory(EZQ_API_TOKENS=ADMIN_TOKEN, EZQ_LIVE_HEARTBEAT="0.5")


@pytest.fixture(scope="module")
def client(server: Any) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {create_key(TENANT)}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as c:
        yield c


def marker() -> str:
    return f"live {uuid.uuid4()}"


def enqueue(client: httpx.Client, prompt: str) -> str:
    answer = client.post(
        "/v1/jobs", json={"model": MODEL, "messages": [{"role": "user", "content": prompt}]}
    )
    assert answer.status_code == 202, answer.text
    job_id: str = answer.json()["job_id"]
    return job_id


def slow(prompt: str, *, delay: float = 0.15, **fields: Any) -> Fault:
    return Fault(match=prompt, reply=REPLY, chunk_delay=delay, **fields)


def events(
    client: httpx.Client, job_id: str, params: dict[str, str] | None = None, **headers: str
) -> Iterator[Event]:
    """Parse the event stream as it arrives (comments and `retry:` skipped)."""
    path = f"/v1/jobs/{job_id}/events"
    with client.stream("GET", path, headers=headers, params=params) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        for line in response.iter_lines():
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
                continue
            if "event" in fields:
                yield Event(
                    fields["id"], fields["event"], json.loads(fields["data"]), fields["data"]
                )
            fields = {}


def text_of(received: list[Event]) -> str:
    return "".join(e.data.get("content", "") for e in received if e.type == "delta")


def test_deltas_arrive_in_order_before_the_end_then_the_final_event(
    client: httpx.Client, fake_gateway: Any
) -> None:
    """A slow answer streams as deltas in order, the first while the job still runs, and the
    stream ends with `job.succeeded` carrying the webhook body; no key is in Redis."""
    prompt = marker()
    fake_gateway.add_faults(slow(prompt))
    job_id = enqueue(client, prompt)
    received: list[Event] = []
    status_at_first_delta = None
    for event in events(client, job_id):
        if event.type == "delta" and status_at_first_delta is None:
            status_at_first_delta = get_job(job_id)["status"]
        received.append(event)
    assert status_at_first_delta == "running"
    deltas = [e for e in received if e.type == "delta"]
    assert len(deltas) >= 3  # batched, but not into one
    assert all(e.data["attempt"] == 1 for e in deltas)
    assert text_of(received) == REPLY
    final = received[-1]
    assert final.type == "job.succeeded"
    assert [e.type for e in received].count("job.succeeded") == 1
    job = get_job(job_id)
    assert final.raw == final_text(job)  # the webhook builder's JSON, byte for byte
    assert final.data["data"]["content"] == REPLY
    # The final event comes from Postgres (id "final") if a heartbeat passes between the
    # commit and the worker's final entry; every other id is a stream entry's.
    ids = [tuple(int(p) for p in e.id.split("-")) for e in received if e.id != "final"]
    assert len(ids) >= len(received) - 1
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    stored = b"".join(
        v for _, f in redis.Redis.from_url(REDIS_URL).xrange(stream_key(job_id)) for v in f.values()
    )
    assert REPLY.encode() in stored and API_KEY.encode() not in stored


@pytest.mark.parametrize("way", ["header", "query"])
def test_last_event_id_resumes_after_a_reconnect(
    client: httpx.Client, fake_gateway: Any, way: str
) -> None:
    """A client that drops after two deltas and reconnects with `Last-Event-ID` (or, as
    EventSource polyfills do, `?lastEventId=`) gets the rest, without repeats, and the
    reply adds up."""
    prompt = marker()
    fake_gateway.add_faults(slow(prompt))
    job_id = enqueue(client, prompt)
    first: list[Event] = []
    for event in events(client, job_id):
        first.append(event)
        if len(first) == 2:
            break
    assert [e.type for e in first] == ["delta", "delta"]
    assert get_job(job_id)["status"] == "running"  # so the resume is mid-stream
    if way == "header":
        rest = list(events(client, job_id, **{"Last-Event-ID": first[-1].id}))
    else:
        rest = list(events(client, job_id, params={"lastEventId": first[-1].id}))
    assert rest[0].type == "delta"
    assert rest[-1].type == "job.succeeded"
    assert not {e.id for e in first} & {e.id for e in rest}
    assert text_of(first + rest) == REPLY


def test_a_broken_attempt_is_signalled_and_the_retry_streams_again(
    client: httpx.Client, fake_gateway: Any
) -> None:
    """A stream cut mid-way is retried: the client sees attempt 1's deltas, then
    `attempt_restarted`, then attempt 2's whole reply, then the final event."""
    prompt = marker()
    fake_gateway.add_faults(
        slow(prompt, kind="drop_mid_stream", after_chunks=5), slow(prompt, delay=0.05)
    )
    job_id = enqueue(client, prompt)
    received = list(events(client, job_id))
    kinds = [e.type for e in received]
    assert "attempt_restarted" in kinds, kinds
    restart = kinds.index("attempt_restarted")
    before, after = received[:restart], received[restart + 1 :]
    assert received[restart].data == {"attempt": 2}
    assert before and REPLY.startswith(text_of(before)) and text_of(before) != REPLY
    assert all(e.data["attempt"] == 1 for e in before)
    assert all(e.data["attempt"] == 2 for e in after if e.type == "delta")
    assert text_of(after) == REPLY
    assert kinds[-1] == "job.succeeded"
    assert received[-1].data["data"]["attempts"] == 2


def test_an_ended_job_answers_with_its_final_event_at_once(
    client: httpx.Client, fake_gateway: Any
) -> None:
    """A late client of an ended job gets only the final event and the stream closes, also
    when the Redis stream has expired (built from Postgres)."""
    prompt = marker()
    job_id = enqueue(client, prompt)
    job = wait_for_job(job_id)
    for _ in range(2):
        received = list(events(client, job_id))
        assert [e.type for e in received] == ["job.succeeded"]
        assert received[0].raw == final_text(job)
        redis.Redis.from_url(REDIS_URL).delete(stream_key(job_id))


def test_a_cancelled_job_ends_its_stream(client: httpx.Client, fake_gateway: Any) -> None:
    """Cancelling a job that is streaming ends its listeners with `job.cancelled`."""
    prompt = marker()
    fake_gateway.add_faults(slow(prompt))
    job_id = enqueue(client, prompt)
    received: list[Event] = []
    for event in events(client, job_id):
        received.append(event)
        if len(received) == 1:
            assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    assert received[-1].type == "job.cancelled"
    assert received[-1].data["data"]["status"] == "cancelled"


def test_another_tenants_key_gets_404(server: Any, client: httpx.Client) -> None:
    """The events of another tenant's job answer 404 like an unknown id; so does a bad id."""
    job_id = enqueue(client, marker())
    other = {"Authorization": f"Bearer {create_key(OTHER)}"}
    for path in (
        f"/v1/jobs/{job_id}/events",
        f"/v1/jobs/{uuid.uuid4()}/events",
        "/v1/jobs/x/events",
    ):
        answer = httpx.get(server.url + path, headers=other, timeout=10)
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"]["type"] == "job_not_found"
    assert httpx.get(f"{server.url}/v1/jobs/{job_id}/events").status_code == 401


def test_stream_job_yields_the_same_events(fake_gateway: Any, worker: Any) -> None:
    """`stream_job` yields typed events: deltas that add up to the reply, then the final one."""
    from service import enqueue_completion, stream_job

    prompt = marker()
    fake_gateway.add_faults(slow(prompt, delay=0.05))
    job_id = enqueue_completion(MODEL, [{"role": "user", "content": prompt}], tenant=TENANT)
    received = list(stream_job(job_id))
    assert "".join(e.text for e in received) == REPLY
    assert received[-1].type == "job.succeeded"
    assert received[-1].data == final_text(get_job(job_id))
    assert all(e.payload["attempt"] == 1 for e in received[:-1])


def test_enqueue_follow_prints_as_it_goes(fake_gateway: Any, worker: Any, server: Any) -> None:
    """`ezq enqueue --follow` prints the reply's first text while the job still runs, ends
    with the status and exits 0; a failed job exits 1. No reply text reaches the logs."""
    prompt = marker()
    fake_gateway.add_faults(slow(prompt))
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "enqueue", "--follow", "-m", MODEL, prompt],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd="/",
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = os.read(proc.stdout.fileno(), 4096).decode()
    assert first and REPLY.startswith(first)
    job_id = proc.stderr.readline().decode().split()[-1]
    assert get_job(job_id)["status"] == "running"
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert first + out.decode() == REPLY + "\n"
    assert err.decode().strip().endswith("succeeded")
    assert REPLY not in worker.log() and REPLY not in server.log()

    failing = marker()
    fake_gateway.add_faults(Fault(status=400, match=failing))
    done = run_ezq("enqueue", "--follow", "-m", MODEL, failing)
    assert done.returncode == 1
    assert "failed: client_error" in done.stderr


def test_a_key_revoked_while_its_stream_is_open_ends_the_stream(
    server: Any, fake_gateway: Any
) -> None:
    """The stream of a key revoked mid-job ends within a heartbeat, before the job does,
    and reconnecting with the revoked key is refused."""
    from service.db.session import transaction
    from service.keys.store import revoke_key

    key = create_key(TENANT)
    prompt = marker()
    # Deltas 0.4 s apart, against a 0.5 s heartbeat: the stream must end within about a
    # second of the revocation, well before the suite's 4 s attempt deadline cuts the call
    # (the key is revoked in-process, as `ezq keys revoke` does, without its start-up).
    fake_gateway.add_faults(slow(prompt, delay=0.4))
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as http:
        job_id = enqueue(http, prompt)
        received = []
        for event in events(http, job_id):
            received.append(event)
            if len(received) == 1:
                assert event.type == "delta"
                with transaction() as session:
                    revoke_key(session, key_id_of(key))
        assert all(e.type == "delta" for e in received), "the stream outlived its key"
        assert get_job(job_id)["status"] == "running"
        assert http.get(f"/v1/jobs/{job_id}/events").status_code == 401
    wait_for_job(job_id)


def key_id_of(key: str) -> str:
    """The id of the key ``key`` (what ``ezq keys revoke`` takes)."""
    from service.keys.material import key_hash

    ((key_id,),) = sql("SELECT id FROM api_keys WHERE key_hash = :h", h=key_hash(key))
    return str(key_id)


def test_follow_of_a_job_already_ended_prints_its_reply(
    fake_gateway: Any, worker: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job that ended before `--follow` opened its stream (a fast reply) still has its
    reply printed: the final event holds it."""
    from service import enqueue_completion
    from service.cli import _follow

    prompt = marker()
    fake_gateway.add_faults(slow(prompt, delay=0.0))
    job_id = enqueue_completion(MODEL, [{"role": "user", "content": prompt}], tenant=TENANT)
    assert wait_for_job(job_id)["status"] == "succeeded"
    _follow(uuid.UUID(str(job_id)))
    out, err = capsys.readouterr()
    assert out == REPLY + "\n"
    assert err.strip().endswith("succeeded")


def test_no_listener_needed_and_entries_expire(client: httpx.Client, fake_gateway: Any) -> None:
    """The stream is written without a listener, bounded, and set to expire: an hour
    after its last write while the job runs, a minute after its final event (Postgres
    answers for an ended job)."""
    prompt = marker()
    job_id = enqueue(client, prompt)
    wait_for_job(job_id)
    r = redis.Redis.from_url(REDIS_URL)
    deadline = time.monotonic() + 10
    while not r.xrevrange(stream_key(job_id), count=1) and time.monotonic() < deadline:
        time.sleep(0.05)  # the final entry follows the commit
    entries = r.xrange(stream_key(job_id))
    assert entries[-1][1][b"t"] == b"job.succeeded"
    assert 0 < r.ttl(stream_key(job_id)) <= 60


def fragments_to_calls(received: list[Any]) -> list[dict[str, Any]]:
    """Merge streamed tool-call fragments the way an OpenAI client does."""
    calls: dict[int, dict[str, Any]] = {}
    for event in received:
        for fragment in event.payload.get("tool_calls", []) if event.type == "delta" else []:
            call = calls.setdefault(fragment["index"], {"function": {"name": "", "arguments": ""}})
            if fragment.get("id"):
                call["id"] = fragment["id"]
            function = fragment.get("function") or {}
            call["function"]["name"] += function.get("name") or ""
            call["function"]["arguments"] += function.get("arguments") or ""
    return [calls[i] for i in sorted(calls)]


@pytest.mark.parametrize(
    ("model", "surface"), [("claude-opus-4-7", "openai"), ("claude-sonnet-4-6", "anthropic")]
)
def test_tool_call_fragments_stream_on_both_surfaces(
    fake_gateway: Any, worker: Any, model: str, surface: str
) -> None:
    """Tool calls stream as OpenAI-shaped fragments on either surface, and they add up to the
    job's tool calls."""
    from service import enqueue_completion, stream_job

    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    job_id = enqueue_completion(
        model,
        [{"role": "user", "content": marker()}],
        params={"tools": tools},
        surface=surface,
    )
    received = list(stream_job(job_id))
    job = received[-1].payload["data"]
    assert received[-1].type == "job.succeeded", job
    assert job["tool_calls"]
    streamed = fragments_to_calls(received)
    assert [(c["id"], c["function"]) for c in streamed] == [
        (c["id"], c["function"]) for c in job["tool_calls"]
    ]
    assert len([e for e in received if e.type == "delta"]) >= 1


def test_older_attempt_deltas_are_dropped_after_a_restart() -> None:
    """A dead attempt's batch that lands after the next attempt started is not passed on."""
    from service.live.events import Follower, entry_fields

    def entry(n: int, kind: str, attempt: int) -> tuple[bytes, dict[bytes, bytes]]:
        fields = entry_fields(kind, {"attempt": attempt, "content": "x"}, attempt)
        return f"{n}-0".encode(), {k.encode(): v.encode() for k, v in fields.items()}

    follower = Follower()
    entries = [entry(1, "delta", 1), entry(2, "attempt_restarted", 2), entry(3, "delta", 1)]
    events = follower.take([*entries, entry(4, "delta", 2)])
    assert [(e.type, e.attempt) for e in events] == [
        ("delta", 1),
        ("attempt_restarted", 2),
        ("delta", 2),
    ]
    assert follower.last_id == "4-0" and not follower.done


def test_redis_down_for_live_tokens_never_fails_a_job(
    worker_factory: Any, fake_gateway: Any, own_queue: str
) -> None:
    """With the live-tokens Redis unreachable, a streamed job still succeeds, the worker says
    so once, and `stream_job` answers with the final event from Postgres."""
    from service import enqueue_completion, stream_job

    dead = f"redis://127.0.0.1:{free_port()}/0"
    worker = worker_factory(env={"EZQ_QUEUE": own_queue, "EZQ_LIVE_REDIS_URL": dead})
    prompt = marker()
    fake_gateway.add_faults(slow(prompt, delay=0.02))
    job_id = enqueue_completion(MODEL, [{"role": "user", "content": prompt}])
    assert wait_for_job(job_id)["status"] == "succeeded"
    assert "live tokens: could not write to Redis" in worker.log()
    received = list(stream_job(job_id))
    assert [e.type for e in received] == ["job.succeeded"]
    assert received[0].payload["data"]["content"] == REPLY


@pytest.mark.parametrize("last_event_id", ["", "not-an-id", "99999999999999999999999-0"])
def test_a_quiet_stream_sends_keep_alives_until_the_job_ends(
    server: Any, client: httpx.Client, last_event_id: str
) -> None:
    """A job that has not started gets keep-alive comments (whatever Last-Event-ID says)
    until it ends; cancelling it ends the stream with `job.cancelled`."""
    from service.db import queries
    from service.db.session import transaction
    from service.validation import validate_request

    with transaction() as session:  # never published: it stays queued
        job_id, _ = queries.create_job(
            session,
            validate_request(
                model=MODEL, messages=[{"role": "user", "content": marker()}], tenant=TENANT
            ),
        )
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        assert next(lines) == "retry: 2000"
        keep_alives = 0
        for line in lines:
            keep_alives += line == ": keep-alive"
            if keep_alives == 2:
                break
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
        rest = [line for line in lines if line.startswith("event: ")]
    assert rest == ["event: job.cancelled"]


def test_idle_listeners_hold_no_thread_each(server: Any, client: httpx.Client) -> None:
    """Sixty listeners on jobs that have not started stay open together (more than the
    server's thread pool of 40 could serve if each held a thread), with fewer server threads
    than listeners, and all get keep-alives."""
    import asyncio
    from pathlib import Path

    from service.db import queries
    from service.db.session import transaction
    from service.validation import validate_request

    listeners = 60
    with transaction() as session:  # never published: they stay queued
        job_ids = [
            queries.create_job(
                session,
                validate_request(
                    model=MODEL, messages=[{"role": "user", "content": marker()}], tenant=TENANT
                ),
            )[0]
            for _ in range(listeners)
        ]
    status = Path(f"/proc/{server.proc.pid}/status")

    def server_threads() -> int:
        line = next(x for x in status.read_text().splitlines() if x.startswith("Threads:"))
        return int(line.split()[1])

    async def main() -> int:
        opened = 0
        all_open = asyncio.Event()

        async def listen(http: httpx.AsyncClient, job_id: uuid.UUID) -> None:
            nonlocal opened
            async with http.stream("GET", f"/v1/jobs/{job_id}/events") as response:
                lines = response.aiter_lines()
                assert await anext(lines) == "retry: 2000"
                opened += 1
                if opened == listeners:
                    all_open.set()
                await asyncio.wait_for(all_open.wait(), timeout=30)
                async for line in lines:
                    if line == ": keep-alive":
                        return

        async def count_threads() -> int:
            await asyncio.wait_for(all_open.wait(), timeout=30)
            return server_threads()

        limits = httpx.Limits(max_connections=listeners + 5)
        async with httpx.AsyncClient(
            base_url=server.url, headers=client.headers, timeout=30, limits=limits
        ) as http:
            results = await asyncio.gather(count_threads(), *(listen(http, j) for j in job_ids))
        threads: int = results[0]
        return threads

    threads = asyncio.run(main())
    assert threads < listeners, threads


# redis-py 8 times a socket read out after 5 s unless told otherwise; a listener's XREAD
# blocks for EZQ_LIVE_HEARTBEAT (15 s by default), so each quiet read used to end in a
# TimeoutError, taken for Redis being down: the listener slept a heartbeat blind and
# answered the final event only, its deltas lost.
PAST_REDIS_DEFAULT_S = 5


@pytest.fixture
def running_job() -> Iterator[str]:
    """A job of TENANT that is running as far as anyone can tell (a lease an hour long,
    so the sweep leaves it alone) while the test writes its stream itself; ended
    afterwards (left running, it would count as a message the broker should hold, for
    every later sweep of the suite's database)."""
    from service.db import queries
    from service.db.session import transaction
    from service.validation import validate_request

    with transaction() as session:
        job_id, _ = queries.create_job(
            session,
            validate_request(
                model=MODEL, messages=[{"role": "user", "content": marker()}], tenant=TENANT
            ),
        )
    sql_exec(
        "UPDATE jobs SET status = 'running', attempts = 1, started_at = now(),"
        " needs_publish = false, lease_expires_at = now() + interval '1 hour' WHERE id = :j",
        j=str(job_id),
    )
    yield str(job_id)
    sql_exec(
        "UPDATE jobs SET status = 'cancelled', finished_at = now(), lease_expires_at = NULL"
        " WHERE id = :j",
        j=str(job_id),
    )


def sql_exec(statement: str, **params: Any) -> None:
    from sqlalchemy import text

    from service.db.session import transaction

    with transaction() as session:
        session.execute(text(statement), params)


def wait_for_a_long_blocked_read(gone: Any) -> None:
    """Until some client has been blocked in XREAD for longer than redis-py's default
    read timeout; ``gone()`` says the reader has given up (a failure)."""

    def blocked_long() -> bool:
        assert not gone(), "the reader stopped before its read had blocked long"
        return any(
            c.get("cmd") == "xread"
            and "b" in c.get("flags", "")
            and int(c["idle"]) > PAST_REDIS_DEFAULT_S
            for c in admin.client_list()
        )

    with redis.Redis.from_url(REDIS_URL) as admin:
        wait_until(blocked_long, "an XREAD blocked past 5 s", timeout=3 * PAST_REDIS_DEFAULT_S)


def write_reply(job_id: str) -> None:
    """What a worker's live publisher writes for a short reply: deltas, then the end."""
    from service.live.events import entry_fields

    client = redis.Redis.from_url(REDIS_URL)
    try:
        key = stream_key(job_id)
        for i in range(0, len(REPLY), 8):
            delta = {"attempt": 1, "content": REPLY[i : i + 8]}
            client.xadd(key, entry_fields("delta", delta, 1))
        client.xadd(key, entry_fields("job.succeeded", '{"type": "job.succeeded"}', None))
        client.expire(key, 60)
    finally:
        client.close()


def test_a_listener_waiting_long_for_the_first_token_gets_every_delta(
    api_server_factory: Any, running_job: str
) -> None:
    """A job whose first token comes after a long quiet wait (queued behind others, a
    slow gateway) streams its deltas over HTTP as they come, not only its final event."""
    server = api_server_factory(EZQ_API_TOKENS=ADMIN_TOKEN, EZQ_LIVE_HEARTBEAT="8")
    job_id = running_job
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with (
        httpx.Client(base_url=server.url, headers=headers, timeout=30) as admin,
        admin.stream("GET", f"/v1/jobs/{job_id}/events") as response,
    ):
        lines = response.iter_lines()
        assert next(lines) == "retry: 2000"  # the stream is open: its first read follows
        wait_for_a_long_blocked_read(gone=lambda: False)
        write_reply(job_id)
        named: list[tuple[str, dict[str, Any]]] = []
        event = ""
        for line in lines:
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                named.append((event, json.loads(line.removeprefix("data: "))))
    assert "".join(data.get("content", "") for kind, data in named if kind == "delta") == REPLY
    assert named[-1][0] == "job.succeeded"


def test_stream_job_waiting_long_for_the_first_token_gets_every_delta(running_job: str) -> None:
    """The same from Python: `stream_job` (and so `ezq enqueue --follow`) yields every
    delta of a job whose first token came after a long quiet wait."""
    import threading

    from service import stream_job

    job_id = running_job
    received: list[Any] = []
    failure: list[BaseException] = []

    def follow() -> None:
        try:
            received.extend(stream_job(job_id))
        except BaseException as exc:  # handed to the test's thread
            failure.append(exc)

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    wait_for_a_long_blocked_read(gone=lambda: not reader.is_alive())
    write_reply(job_id)
    reader.join(timeout=60)
    assert not failure, failure
    assert "".join(e.text for e in received) == REPLY
    assert received[-1].type == "job.succeeded"

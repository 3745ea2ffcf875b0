"""Messages no worker can run are kept aside as dead letters; the worker keeps serving."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis

from service import enqueue_completion
from service.worker.app import app
from tests.conftest import REDIS_URL, WorkerProcess, free_port, run_ezq, sql, wait_for_job
from tests.test_faults import wait_until

pytestmark = pytest.mark.usefixtures("worker")


def captured_envelope(service_env: dict[str, str], name: str, **kwargs: Any) -> dict[str, Any]:
    """A real kombu envelope for task ``name``, taken off a scratch queue."""
    scratch = f"{service_env['EZQ_QUEUE']}-capture-{uuid.uuid4().hex[:8]}"
    app.send_task(name, kwargs=kwargs, queue=scratch)
    client = redis.Redis.from_url(REDIS_URL)
    raw = client.rpop(scratch)
    client.delete(scratch)
    assert raw is not None
    return dict(json.loads(raw))


def with_body(envelope: dict[str, Any], body: str) -> dict[str, Any]:
    return {**envelope, "body": body}


def poison_shapes(service_env: dict[str, str]) -> dict[str, bytes]:
    good = captured_envelope(service_env, "ezq.chat_completion", job_id=str(uuid.uuid4()))
    unknown = captured_envelope(service_env, "other.service.task", x=1)
    bad_args = captured_envelope(service_env, "ezq.chat_completion", job_id=12345)
    not_json_body = base64.b64encode(b"{{{ not json").decode()
    return {
        "not json": b"not json",
        "a JSON array": b"[1, 2, 3]",
        "a JSON string": b'"just a string"',
        "invalid utf-8": b"\xff\xfe\xfa",
        "no properties": json.dumps({"body": "e30=", "headers": {}}).encode(),
        "body not base64": json.dumps(with_body(good, "%%% not base64 %%%")).encode(),
        "body not JSON": json.dumps(with_body(good, not_json_body)).encode(),
        "body of the wrong shape": json.dumps(
            with_body(good, base64.b64encode(b"[1, 2, 3]").decode())
        ).encode(),
        "unknown task": json.dumps(unknown).encode(),
        "job_id not a string": json.dumps(bad_args).encode(),
        "no task header": json.dumps({**good, "headers": {"lang": "py"}}).encode(),
    }


def test_poison_messages_are_kept_aside_and_the_worker_keeps_serving(
    service_env: dict[str, str], worker: WorkerProcess, fake_gateway: Any
) -> None:
    """Each malformed shape becomes one dead letter with its reason; a job sent after them
    still runs, and the worker never exits."""
    before = sql("SELECT coalesce(max(id), 0) FROM dead_letters")[0][0]
    shapes = poison_shapes(service_env)
    client = redis.Redis.from_url(REDIS_URL)
    for raw in shapes.values():
        client.lpush(service_env["EZQ_QUEUE"], raw)

    deadline = time.monotonic() + 30
    while sql("SELECT count(*) FROM dead_letters WHERE id > :b", b=before)[0][0] < len(shapes):
        assert worker.proc.poll() is None, f"the worker exited:\n{worker.log()[-3000:]}"
        assert time.monotonic() < deadline, sql(
            "SELECT reason FROM dead_letters WHERE id > :b", b=before
        )
        time.sleep(0.1)

    job = wait_for_job(enqueue_completion("glm-5.1", [{"role": "user", "content": "still here"}]))
    assert job["status"] == "succeeded"
    assert worker.proc.poll() is None
    letters = sql(
        "SELECT raw, reason, raw_bytes FROM dead_letters WHERE id > :b ORDER BY id", b=before
    )
    assert len(letters) == len(shapes)
    kept = {bytes(raw) for raw, _, _ in letters}
    for name, raw in shapes.items():
        if name in ("job_id not a string", "invalid utf-8"):
            continue  # kept as decoded arguments / as kombu's lossy text of it
        assert raw in kept, f"{name!r} was not kept as it arrived"
    reasons = " | ".join(reason for _, reason, _ in letters)
    assert "unknown task 'other.service.task'" in reasons
    assert "job_id: is not a UUID (a int)" in reasons
    assert "not valid base64" in reasons


def test_arguments_the_task_does_not_take_are_dead_letters_naming_them(
    service_env: dict[str, str], worker: WorkerProcess
) -> None:
    """An unknown keyword, request fields without the model, a second positional argument
    or job_id given twice: each is a dead letter whose reason names it, not a TypeError
    traceback, and its job is never created."""
    messages = [{"role": "user", "content": "arguments it does not take"}]
    ids = [str(uuid.uuid4()) for _ in range(4)]
    sends: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {
        ids[0]: ((), {"model": "glm-5.1", "messages": messages, "bogus": 1}),
        ids[1]: ((), {"tenant": "no-model"}),
        ids[2]: ((ids[2], "surplus"), {}),
        ids[3]: ((ids[3],), {"job_id": ids[3]}),
    }
    log_before = len(worker.log())
    for task_id, (args, kwargs) in sends.items():
        app.send_task(
            "ezq.chat_completion",
            args=args,
            kwargs=kwargs,
            task_id=task_id,
            queue=service_env["EZQ_QUEUE"],
            ignore_result=True,
        )
    query = "SELECT message_id, reason FROM dead_letters WHERE message_id = ANY(:ids)"
    wait_until(lambda: len(sql(query, ids=ids)) == len(ids), "a dead letter for each message")
    letters = dict(sql(query, ids=ids))

    takes = (
        "job_id, model, messages, conversation_id, params, tenant, metadata,"
        " idempotency_key, callback_url, surface, priority"
    )
    assert letters == {
        ids[0]: f"invalid arguments: bogus: is not an argument of ezq.chat_completion;"
        f" it takes {takes}",
        ids[1]: "invalid arguments: model: is required",
        ids[2]: "invalid arguments: args: ezq.chat_completion takes at most one positional"
        " argument (job_id), got 2",
        ids[3]: "invalid arguments: job_id: given both as the first argument and by name",
    }
    assert "Traceback" not in worker.log()[log_before:]
    assert sql("SELECT count(*) FROM jobs WHERE id = ANY(CAST(:ids AS uuid[]))", ids=ids) == [(0,)]


def test_each_dead_letter_is_logged_once_without_its_content(
    service_env: dict[str, str], worker: WorkerProcess
) -> None:
    """A dead letter's log line names its id, reason and size, never the message text."""
    marker = f"secret-prompt-{uuid.uuid4().hex}"
    before = sql("SELECT coalesce(max(id), 0) FROM dead_letters")[0][0]
    redis.Redis.from_url(REDIS_URL).lpush(service_env["EZQ_QUEUE"], f"oops {marker}")
    deadline = time.monotonic() + 20
    while not (rows := sql("SELECT id FROM dead_letters WHERE id > :b", b=before)):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    (letter_id,) = rows[0]
    deadline = time.monotonic() + 10
    while f"dead letter {letter_id}:" not in worker.log():
        assert time.monotonic() < deadline
        time.sleep(0.1)

    assert worker.log().count(f"dead letter {letter_id}:") == 1
    assert marker not in worker.log()


def test_dead_letters_can_be_listed_and_purged(service_env: dict[str, str]) -> None:
    """``ezq dead-letters list`` shows what was kept and ``purge`` deletes it."""
    before = sql("SELECT coalesce(max(id), 0) FROM dead_letters")[0][0]
    redis.Redis.from_url(REDIS_URL).lpush(service_env["EZQ_QUEUE"], b"[]")
    deadline = time.monotonic() + 20
    while not (rows := sql("SELECT id FROM dead_letters WHERE id > :b", b=before)):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    (letter_id,) = rows[0]

    listed = run_ezq("dead-letters", "list", "--since", "1h", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    (entry,) = [e for e in json.loads(listed.stdout) if e["id"] == letter_id]
    assert entry["reason"] == "the message is a JSON list, not an object"
    assert entry["raw"] == "[]"
    table = run_ezq("dead-letters", "list")
    assert str(letter_id) in table.stdout

    refused = run_ezq("dead-letters", "purge")
    assert refused.returncode == 2
    purged = run_ezq("dead-letters", "purge", "--id", str(letter_id))
    assert purged.returncode == 0 and "deleted 1 dead letter" in purged.stdout
    assert sql("SELECT count(*) FROM dead_letters WHERE id = :i", i=letter_id) == [(0,)]


def test_dead_letters_are_counted_in_the_worker_metrics(
    service_env: dict[str, str], worker_factory: Callable[..., WorkerProcess]
) -> None:
    """Each message kept aside adds one to ezq_dead_letters_total by kind."""
    from tests.test_metrics import scrape, value

    queue = f"{service_env['EZQ_QUEUE']}-metrics-{uuid.uuid4().hex[:6]}"
    port = free_port()
    worker_factory(env={"EZQ_QUEUE": queue}, args=["--metrics-port", str(port)])
    client = redis.Redis.from_url(REDIS_URL)
    client.lpush(queue, b"not json at all")
    client.lpush(queue, b'"a string"')

    url = f"http://127.0.0.1:{port}/metrics"
    deadline = time.monotonic() + 20
    while True:
        _, samples = scrape(url)
        counts = (
            value(samples, "ezq_dead_letters_total", kind="not_json"),
            value(samples, "ezq_dead_letters_total", kind="bad_envelope"),
        )
        if counts == (1.0, 1.0) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert counts == (1.0, 1.0)
    # Each says which queue it was read from (a message that is not JSON too).
    assert sql(
        "SELECT reason LIKE 'not a JSON message%', queue FROM dead_letters WHERE raw = :r",
        r=b"not json at all",
    ) == [(True, queue)]
    client.delete(queue)

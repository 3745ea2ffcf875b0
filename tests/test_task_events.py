"""EZQ_TASK_EVENTS: Celery's task events (Flower, `celery events`) on by default, off on
demand, and back on in a running worker with `celery control enable_events`."""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import socket
import time
from collections.abc import Callable, Collection, Iterator
from typing import Any

import redis
from celery import Celery

from service import enqueue_completion
from service.constants import ARGUMENTS_NOT_SHOWN
from service.fake_gateway import Fault
from tests.celery_events import EventLog
from tests.conftest import REDIS_URL, WorkerProcess, wait_for_job

# Sent by the worker that runs the task; the producer's own ``task-sent`` is not its.
WORKER_TASK_EVENTS = {"task-received", "task-started", "task-succeeded"}


def test_task_events_off_until_enabled_remotely(
    worker_factory: Callable[..., WorkerProcess], own_queue: str, fake_gateway: Any
) -> None:
    from service.worker.app import app

    node = f"events-off-{secrets.token_hex(3)}"
    worker_factory(
        env={"EZQ_QUEUE": own_queue, "EZQ_TASK_EVENTS": "false"}, args=["-n", f"{node}@%h"]
    )
    with EventLog() as events:
        quiet = enqueue_completion("glm-5.1", [{"role": "user", "content": "events off"}])
        assert wait_for_job(quiet)["status"] == "succeeded"
        # The worker still sends its own events; two heartbeats after the job ended mean
        # its task events, had there been any, were sent before them.
        beats = events.count("worker-heartbeat", node)
        events.wait_count("worker-heartbeat", node, beats + 2)
        sent = {e["type"] for e in events.of_task(str(quiet))}
        assert not sent & WORKER_TASK_EVENTS, sent

        nodename = f"{node}@{socket.gethostname()}"
        replies = app.control.enable_events(destination=[nodename], reply=True, timeout=10)
        assert replies == [{nodename: {"ok": "task events enabled"}}], replies
        loud = enqueue_completion("glm-5.1", [{"role": "user", "content": "events on"}])
        assert wait_for_job(loud)["status"] == "succeeded"
        succeeded = events.wait_for("task-succeeded", str(loud))
        assert str(succeeded["hostname"]).startswith(node)


def test_the_setting_governs_both_task_event_options(monkeypatch: Any) -> None:
    """Off, neither the worker's task events nor the producers' ``task-sent`` are sent."""
    from service.config import get_settings
    from service.worker.app import celery_config

    for value, expected in (("false", False), ("true", True)):
        monkeypatch.setenv("EZQ_TASK_EVENTS", value)
        get_settings.cache_clear()
        config = celery_config()
        assert config["worker_send_task_events"] is expected
        assert config["task_send_sent_event"] is expected
    monkeypatch.undo()
    get_settings.cache_clear()
    assert celery_config()["worker_send_task_events"] is True


@contextlib.contextmanager
def _task_multi_messages() -> Iterator[Callable[..., list[list[Any]]]]:
    """Listen to the ``task.multi`` messages published on Redis; the function given reads
    what arrived since (each message's events), waiting half a second for more.

    Redis is shared: another worker still busy with an earlier test's job publishes on the
    same channel. Given ``own`` task ids, the function keeps only those tasks' events, and
    only the messages that held any of them."""
    listener = redis.Redis.from_url(REDIS_URL).pubsub()
    listener.psubscribe("*celeryev*task.multi")

    def arrived(own: Collection[str] | None = None) -> list[list[Any]]:
        batches = []
        while (message := listener.get_message(timeout=0.5)) is not None:
            if message["type"] != "pmessage":
                continue
            events = _events_in(message["data"])
            if own is not None:
                events = [event for event in events if event.get("uuid") in own]
            if events:
                batches.append(events)
        return batches

    try:
        yield arrived
    finally:
        listener.close()


def test_task_events_are_published_in_batches_and_none_is_lost(
    worker_factory: Callable[..., WorkerProcess], own_queue: str, fake_gateway: Any
) -> None:
    """A burst of jobs: every job's three task events arrive, in fewer messages than jobs
    (Celery published about one message per event: 41 for these 72 events, against 6)."""
    node = f"events-batched-{secrets.token_hex(3)}"
    worker_factory(env={"EZQ_QUEUE": own_queue}, args=["-n", f"{node}@%h"])
    with _task_multi_messages() as arrived, EventLog() as events:
        jobs = _burst(events, 24)
        for job in jobs:
            sent = {e["type"] for e in events.of_task(job)}
            assert sent >= WORKER_TASK_EVENTS, (job, sent)
        # Everything published is waiting on the listener's connection by now.
        messages = len(arrived(set(jobs)))
    assert 0 < messages <= len(jobs), messages


def test_task_events_are_published_by_the_event_loop_s_timer_alone(
    worker_factory: Callable[..., WorkerProcess], own_queue: str, fake_gateway: Any
) -> None:
    """At more events a second than a full buffer's worth ten times a second, the buffer
    is still published by the event loop's timer only, at most once a tick (Celery's
    threads published it whenever they found it full, 24 events: 71 messages a second of
    9 events each at 0 ms gateway latency and 32 calls in flight)."""
    from service.worker.consumer import EVENT_FLUSH_INTERVAL_S

    node = f"events-timer-{secrets.token_hex(3)}"
    worker_factory(env={"EZQ_QUEUE": own_queue}, args=["-n", f"{node}@%h"])
    with _task_multi_messages() as arrived, EventLog() as events:
        warm = enqueue_completion("glm-5.1", [{"role": "user", "content": "warm"}])
        assert wait_for_job(warm)["status"] == "succeeded"
        events.wait_for("task-succeeded", str(warm))
        arrived()  # the warm-up's
        started = time.monotonic()
        jobs = _burst(events, 300)
        elapsed = time.monotonic() - started
        counts = [len(batch) for batch in arrived(set(jobs))]
    assert sum(counts) >= 3 * len(jobs), sum(counts)
    # Each tick publishes once; the first and the last may fall outside the window.
    assert len(counts) <= elapsed / EVENT_FLUSH_INTERVAL_S + 2, (len(counts), elapsed, counts)


def test_events_buffered_when_the_connection_is_lost_go_out_on_the_next_one() -> None:
    """The timer that publishes task events is cancelled with a lost connection; what the
    threads had buffered by then goes out with the new connection's dispatcher, first."""
    from service.worker.app import app
    from service.worker.consumer import EVENT_BUFFER_LIMIT, carry_buffered_events

    ended = [f"lost-{secrets.token_hex(4)}" for _ in range(3)]
    with _task_multi_messages() as arrived, app.connection_for_write() as conn:
        arrived()  # nothing of this test's yet

        def dispatcher() -> Any:
            return app.events.Dispatcher(
                conn, enabled=True, buffer_group=["task"], buffer_limit=EVENT_BUFFER_LIMIT
            )

        previous = dispatcher()
        for task_id in ended:
            previous.send("task-succeeded", uuid=task_id, runtime=0.1)
        previous.disable()  # as Celery does when the connection is lost
        current = dispatcher()
        current.send("task-received", uuid="after-the-reconnect", name="ezq.chat_completion")
        carry_buffered_events(previous, current)
        current.flush()
        batches = arrived({*ended, "after-the-reconnect"})
        current.disable()
    uuids = [event["uuid"] for batch in batches for event in batch]
    assert uuids == [*ended, "after-the-reconnect"], uuids
    assert not any(previous._group_buffer.values())


def _burst(events: EventLog, count: int) -> list[str]:
    """``count`` jobs enqueued at once; their ids once each has succeeded and its
    ``task-succeeded`` event has arrived."""
    jobs = [
        str(enqueue_completion("glm-5.1", [{"role": "user", "content": f"burst {i}"}]))
        for i in range(count)
    ]
    for job in jobs:
        assert wait_for_job(job)["status"] == "succeeded"
    for job in jobs:
        events.wait_for("task-succeeded", job)
    return jobs


def _events_in(data: bytes) -> list[Any]:
    """The events of a ``task.multi`` message published on Redis (kombu's envelope, the
    body base64-encoded JSON)."""
    envelope = json.loads(data)
    body = (
        base64.b64decode(envelope["body"])
        if envelope["properties"].get("body_encoding") == "base64"
        else envelope["body"]
    )
    decoded = json.loads(body)
    return decoded if isinstance(decoded, list) else [decoded]


def test_task_events_never_carry_a_task_s_arguments(
    worker_factory: Callable[..., WorkerProcess], own_queue: str, fake_gateway: Any
) -> None:
    """A foreign producer's message carries its arguments as text in its headers (the
    prompt, the metadata, a callback URL's token), which Celery copies into
    ``task-received``: no task event holds any of it, only the placeholder."""
    worker_factory(env={"EZQ_QUEUE": own_queue})
    marker = f"private-prompt-{secrets.token_hex(4)}"
    foreign = Celery("billing-service", broker=REDIS_URL)
    foreign.conf.task_serializer = "json"
    try:
        with EventLog() as events:
            sent = foreign.send_task(
                "ezq.chat_completion",
                kwargs={
                    "model": "glm-5.1",
                    "messages": [{"role": "user", "content": marker}],
                    "metadata": {"note": marker},
                },
                queue=own_queue,
                ignore_result=True,
            )
            # The job is written by its claim: its task's end comes first.
            events.wait_for("task-succeeded", sent.id, timeout=30)
            assert wait_for_job(sent.id)["status"] == "succeeded"
            received = events.wait_for("task-received", sent.id)
            assert received["args"] == received["kwargs"] == ARGUMENTS_NOT_SHOWN, received
            for event in events.of_task(sent.id):
                text = json.dumps(event)
                assert marker not in text, event
    finally:
        foreign.close()


def test_remote_control_answers_without_a_task_s_arguments(
    worker_factory: Callable[..., WorkerProcess], own_queue: str, fake_gateway: Any
) -> None:
    """``celery inspect active`` and ``query_task`` describe a running job without its
    arguments (Celery answers with the decoded arguments: a foreign producer's prompt)."""
    from service.worker.app import app

    node = f"inspect-{secrets.token_hex(3)}"
    # The call waits 3 s for its first byte, within the worker's read timeout: the job is
    # running for all of that, however slowly the inspect replies come.
    worker_factory(
        env={"EZQ_QUEUE": own_queue, "EZQ_GATEWAY_READ_TIMEOUT": "10"},
        args=["-n", f"{node}@%h"],
    )
    nodename = f"{node}@{socket.gethostname()}"
    marker = f"private-prompt-{secrets.token_hex(4)}"
    fake_gateway.add_faults(Fault(kind="normal", latency=3.0, match=marker, times=1))
    foreign = Celery("billing-service", broker=REDIS_URL)
    foreign.conf.task_serializer = "json"
    try:
        sent = foreign.send_task(
            "ezq.chat_completion",
            kwargs={"model": "glm-5.1", "messages": [{"role": "user", "content": marker}]},
            queue=own_queue,
            ignore_result=True,
        )
        fake_gateway.wait_for_request(marker)
        inspect = app.control.inspect(destination=[nodename], timeout=5)
        active = inspect.active()
        queried = inspect.query_task(sent.id)
        assert wait_for_job(sent.id)["status"] == "succeeded"
    finally:
        foreign.close()
    (running,) = active[nodename]
    assert running["id"] == sent.id
    assert running["args"] == running["kwargs"] == ARGUMENTS_NOT_SHOWN, running
    state, described = queried[nodename][sent.id]
    assert state == "active"
    assert described["args"] == described["kwargs"] == ARGUMENTS_NOT_SHOWN, described
    assert marker not in json.dumps([active, queried])

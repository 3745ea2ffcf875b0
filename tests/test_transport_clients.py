"""The Redis transport keeps one client per connection pool for the commands it sends
outside the event loop, and makes a new one when kombu replaces the pool; acks made on the
worker's event loop reach Redis in batches, and never after the message is given back."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from kombu import Connection
from kombu.asynchronous import Hub

from service import enqueue_completion
from service.fake_gateway import Fault
from service.worker.transport import Channel, Transport
from tests.conftest import REDIS_URL, reset_settings, sql, wait_for_job
from tests.private_services import PrivateRedis
from tests.test_faults import requests_for, wait_until

MODEL = "deepseek-v4-flash"


@pytest.fixture
def channel() -> Iterator[Channel]:
    with Connection(REDIS_URL, transport=Transport) as connection:
        made = connection.channel()
        assert isinstance(made, Channel)
        yield made


def test_commands_share_one_client_while_the_pool_lives(channel: Channel) -> None:
    with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
        assert first is second
        assert first.connection_pool is channel.pool
        assert first.ping()


def test_a_new_pool_after_a_disconnect_gets_a_new_client(channel: Channel) -> None:
    with channel.conn_or_acquire() as before:
        assert before.ping()
    channel._disconnect_pools()
    with channel.conn_or_acquire() as after:
        assert after is not before
        assert after.connection_pool is channel.pool
        assert after.ping()


def test_threads_sharing_the_client_lose_nothing(channel: Channel) -> None:
    """What kombu does from several threads at once (acks and the unacked bookkeeping are
    pipelines, restoring is a WATCH/MULTI transaction) stays exact through one client,
    and every connection goes back to the pool."""
    key = f"ezq-test-transport-{uuid.uuid4().hex[:8]}"
    per_thread, threads = 200, 8

    def work(thread: int) -> None:
        for i in range(per_thread):
            with channel.conn_or_acquire() as client:
                client.transaction(lambda pipe: _increment(pipe, key), key)
                with client.pipeline() as pipe:
                    pipe.rpush(f"{key}:list", f"{thread}:{i}")
                    pipe.hset(f"{key}:hash", f"{thread}:{i}", i)
                    pipe.execute()

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    with channel.conn_or_acquire() as client:
        counted = int(client.get(key))
        listed = {item.decode() for item in client.lrange(f"{key}:list", 0, -1)}
        hashed = client.hlen(f"{key}:hash")
        client.delete(key, f"{key}:list", f"{key}:hash")
        in_use = len(client.connection_pool._in_use_connections)
    assert counted == per_thread * threads
    assert listed == {f"{t}:{i}" for t in range(threads) for i in range(per_thread)}
    assert hashed == per_thread * threads
    assert in_use == 0


def _increment(pipe: Any, key: str) -> None:
    # Read under WATCH, write in MULTI: a lost update would show in the total.
    value = int(pipe.get(key) or 0)
    pipe.multi()
    pipe.set(key, value + 1)


def test_the_event_loop_keeps_its_own_client(channel: Channel) -> None:
    with channel.conn_or_acquire() as commands:
        # The BRPOP poller's client runs on the asynchronous pool, never the shared one.
        assert channel.client is not commands
        assert channel.client.connection_pool is not commands.connection_pool


@pytest.fixture
def private_channel() -> Iterator[tuple[Channel, str]]:
    """A channel whose queue and unacked bookkeeping are this test's own."""
    name = f"ezq-test-acks-{uuid.uuid4().hex[:8]}"
    options = {"unacked_key": f"{name}:unacked", "unacked_index_key": f"{name}:unacked_index"}
    with Connection(REDIS_URL, transport=Transport, transport_options=options) as connection:
        made = connection.channel()
        assert isinstance(made, Channel)
        made.queue_declare(name)
        try:
            yield made, name
        finally:
            with made.conn_or_acquire() as client:
                client.delete(name, options["unacked_key"], options["unacked_index_key"])


def _take(channel: Channel, queue: str, count: int) -> list[Any]:
    for i in range(count):
        channel.basic_publish(channel.prepare_message(f"body {i}"), exchange="", routing_key=queue)
    messages = [channel.basic_get(queue) for _ in range(count)]
    assert all(m is not None for m in messages)
    return messages


def _unacked(channel: Channel) -> int:
    with channel.conn_or_acquire() as client:
        index = client.zcard(channel.unacked_index_key)
        assert client.hlen(channel.unacked_key) == index
        return int(index)


def test_acks_on_the_event_loop_thread_reach_redis_together(
    private_channel: tuple[Channel, str],
) -> None:
    channel, queue = private_channel
    transport = channel.connection
    transport.loop_thread = threading.get_ident()  # as the worker's loop does on its turn
    messages = _take(channel, queue, 5)
    assert _unacked(channel) == 5
    for message in messages[:3]:
        message.ack()
    # Marked done for the channel (it may take the next message), not yet sent.
    assert _unacked(channel) == 5
    assert channel.qos.can_consume()
    assert channel.qos.send_acks() == 3
    assert _unacked(channel) == 2
    assert channel.qos.send_acks() == 0


def test_a_closing_channel_sends_its_last_acks(private_channel: tuple[Channel, str]) -> None:
    """Every message acknowledged, none to restore: the pending removals still reach
    Redis, so that nothing comes back after the visibility timeout."""
    channel, queue = private_channel
    channel.connection.loop_thread = threading.get_ident()
    for message in _take(channel, queue, 3):
        message.ack()
    assert _unacked(channel) == 3
    channel.qos.restore_unacked_once()
    assert _unacked(channel) == 0


def test_a_channel_closing_after_redis_went_away_closes_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every message acknowledged, the acks not sent yet, and Redis gone: closing the
    channel says so in the log and raises nothing (kombu's close has nothing to restore)."""
    with PrivateRedis() as server, Connection(server.url, transport=Transport) as connection:
        channel = connection.channel()
        assert isinstance(channel, Channel)
        channel.queue_declare("q")
        channel.connection.loop_thread = threading.get_ident()
        for message in _take(channel, "q", 2):
            message.ack()
        server.stop()
        with caplog.at_level(logging.WARNING, logger="service.worker.transport"):
            channel.qos.restore_unacked_once()
    assert "could not acknowledge messages on Redis: ConnectionError" in caplog.text


def test_a_closed_connection_leaves_the_event_loop() -> None:
    """The worker's loop outlives a connection lost and made again: the closed one's
    transport is no longer called at each turn."""
    hub = Hub()
    try:
        with Connection(REDIS_URL, transport=Transport) as connection:
            connection.default_channel  # noqa: B018 (opens the connection and its channel)
            transport = connection.transport
            transport.register_with_event_loop(connection.connection, hub)
            # kombu's own per-turn callback runs inside ours, after the take.
            assert hub.on_tick == {transport._on_tick}
            assert len(transport._poll_starts) == 1
            assert transport._loop_closed in hub.on_close
        assert transport._on_tick not in hub.on_tick
        assert transport._loop_closed not in hub.on_close
    finally:
        hub.close()


def test_acks_left_for_a_closing_event_loop_reach_redis() -> None:
    """kombu's hub, closing, runs the callbacks still waiting for a turn on the loop's
    thread after its last turn: Celery's late acks of the tasks that ended during a warm
    shutdown. They reach Redis, so that those messages are not delivered again."""
    name = f"ezq-test-acks-{uuid.uuid4().hex[:8]}"
    options = {"unacked_key": f"{name}:unacked", "unacked_index_key": f"{name}:unacked_index"}
    hub = Hub()
    with Connection(REDIS_URL, transport=Transport, transport_options=options) as connection:
        channel = connection.default_channel
        assert isinstance(channel, Channel)
        channel.queue_declare(name)
        try:
            transport = connection.transport
            transport.register_with_event_loop(connection.connection, hub)
            transport._send_acks()  # a turn of the loop, on this thread
            ended, running = _take(channel, name, 2)
            hub.call_soon(ended.ack)  # as Celery's call_soon_ack does
            hub.close()
            assert _unacked(channel) == 1
            assert running.delivery_tag in channel.qos._delivered
        finally:
            with channel.conn_or_acquire() as client:
                client.delete(name, options["unacked_key"], options["unacked_index_key"])


def test_acks_from_other_threads_reach_redis_at_once(
    private_channel: tuple[Channel, str],
) -> None:
    channel, queue = private_channel
    channel.connection.loop_thread = threading.get_ident() + 1  # the loop is elsewhere
    messages = _take(channel, queue, 2)
    messages[0].ack()
    assert _unacked(channel) == 1


def test_a_closing_channel_gives_back_only_what_was_not_acknowledged(
    private_channel: tuple[Channel, str],
) -> None:
    """Acks still waiting for the loop's turn are sent before the unacked messages are
    restored: an acknowledged message is never delivered again."""
    channel, queue = private_channel
    channel.connection.loop_thread = threading.get_ident()
    messages = _take(channel, queue, 3)
    messages[0].ack()
    messages[1].ack()
    channel.qos.restore_unacked_once()
    assert _unacked(channel) == 0
    with channel.conn_or_acquire() as client:
        back = [client.lindex(queue, i) for i in range(client.llen(queue))]
    assert [json.loads(raw)["properties"]["delivery_tag"] for raw in back] == [
        messages[2].delivery_tag
    ]


@pytest.mark.parametrize("on_the_loop", [True, False], ids=["loop thread", "other thread"])
@pytest.mark.parametrize("settle", ["ack", "reject", "requeue"])
def test_a_message_settled_after_its_channel_closed_changes_nothing(
    on_the_loop: bool, settle: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker that lost its connection closes the channel and makes a new one while its
    threads still run the tasks of the old one: closing gave those messages back to their
    queue, to be delivered again. Their tasks' acks and rejects, ending later on the closed
    channel, raise nothing (an error there would stop the worker) and send nothing."""
    name = f"ezq-test-closed-{uuid.uuid4().hex[:8]}"
    options = {"unacked_key": f"{name}:unacked", "unacked_index_key": f"{name}:unacked_index"}
    client = redis.Redis.from_url(REDIS_URL)
    try:
        with Connection(REDIS_URL, transport=Transport, transport_options=options) as connection:
            channel = connection.channel()
            assert isinstance(channel, Channel)
            channel.queue_declare(name)
            transport = channel.connection
            transport.loop_thread = threading.get_ident() + (0 if on_the_loop else 1)
            (message,) = _take(channel, name, 1)
            channel.close()
            assert client.llen(name) == 1  # given back by the close
            with caplog.at_level(logging.INFO, logger="service.worker.transport"):
                if settle == "ack":
                    message.ack()
                else:
                    message.reject(requeue=settle == "requeue")
        assert client.llen(name) == 1
        assert client.hlen(options["unacked_key"]) == 0
        if settle == "ack":
            assert "acknowledged after its channel closed" in caplog.text
    finally:
        client.delete(name, *options.values())


def test_a_worker_acknowledges_every_job_it_ran(
    fake_gateway: Any, own_queue: str, worker_factory: Any
) -> None:
    """A real worker's acks (made on its event loop, sent in batches) reach Redis, also those
    of its last turns when it stops: no message of a job it ran is left in the unacked
    bookkeeping or given back to the queue, and no job ran twice.

    Counted by job: every worker sharing the database may be sent other jobs (its sweep
    republishes stale ones of the whole pool to its own queue), whose messages a stopping
    worker rightly leaves on the broker."""
    # The last calls wait 1 s for their first byte: a read timeout far above it, so that
    # none is retried (a second request) on a slow host.
    worker = worker_factory(
        env={
            "EZQ_QUEUE": own_queue,
            "EZQ_WORKER_CONCURRENCY": "8",
            "EZQ_GATEWAY_READ_TIMEOUT": "10",
        }
    )
    marker = f"acks-{uuid.uuid4().hex[:8]}"
    jobs = [
        enqueue_completion(MODEL, [{"role": "user", "content": f"{marker} {i}"}]) for i in range(24)
    ]
    assert all(wait_for_job(job)["status"] == "succeeded" for job in jobs)
    ours = {str(job) for job in jobs}
    # Every job having ended, only an unacknowledged message of it could be left.
    wait_until(lambda: not ours & _job_messages_held(own_queue), "every message acknowledged")
    # Stopped while its last jobs are in flight: they end during the warm shutdown, after
    # the loop's last turn, and their acks still reach Redis.
    last = f"{marker} last"
    fake_gateway.add_faults(Fault(latency=1.0, match=last, times=8))
    jobs += [
        enqueue_completion(MODEL, [{"role": "user", "content": f"{last} {i}"}]) for i in range(8)
    ]
    wait_until(
        lambda: sum(1 for r in fake_gateway.requests if last in str(r.body)) == 8,
        "the last jobs in flight",
    )
    worker.stop()
    assert all(wait_for_job(job)["status"] == "succeeded" for job in jobs)
    ours = {str(job) for job in jobs}
    assert not ours & _job_messages_held(own_queue)
    assert sum(1 for r in fake_gateway.requests if marker in str(r.body)) == len(jobs)
    assert "could not acknowledge" not in worker.log()


def _job_messages_held(queue: str) -> set[str]:
    """The task ids (job ids) of the messages Redis holds for ``queue``: waiting on it (any
    priority level) or taken and not acknowledged. Entries other tests left unreadable on
    purpose are skipped."""
    client = redis.Redis.from_url(REDIS_URL)
    envelopes = [
        _json_or_none(raw)
        for key in client.scan_iter(match=f"{queue}*", _type="list")
        for raw in client.lrange(key, 0, -1)
    ]
    for entry in client.hvals("unacked"):
        taken = _json_or_none(entry)
        if isinstance(taken, list) and len(taken) == 3 and taken[2] == queue:
            envelopes.append(taken[0])
    return {
        str(envelope["headers"].get("id"))
        for envelope in envelopes
        if isinstance(envelope, dict) and isinstance(envelope.get("headers"), dict)
    }


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _send_by_name(broker_url: str, queue: str, texts: list[str]) -> list[str]:
    """Jobs sent by task name, as a foreign producer sends them; their ids."""
    from celery import Celery

    producer = Celery("transport-test", broker=broker_url)
    job_ids = [str(uuid.uuid4()) for _ in texts]
    for job_id, text in zip(job_ids, texts, strict=True):
        producer.send_task(
            "ezq.chat_completion",
            kwargs={
                "job_id": job_id,
                "model": MODEL,
                "messages": [{"role": "user", "content": text}],
            },
            queue=queue,
            ignore_result=True,
        )
    producer.close()
    return job_ids


@contextmanager
def _private_broker(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[PrivateRedis, str]]:
    """A Redis of the test's own for the workers it starts, and a queue name on it.

    This process follows it while the test runs and the shared broker again afterwards:
    settings read meanwhile (cached) would otherwise send later tests' live-token readers
    to a Redis that no longer exists."""
    with PrivateRedis() as broker:
        monkeypatch.setenv("CELERY_BROKER_URL", broker.url)  # Celery prefers it to broker=
        reset_settings()
        try:
            yield broker, f"ezq-own-{uuid.uuid4().hex[:8]}"
        finally:
            monkeypatch.undo()
            reset_settings()


def _wait_succeeded(job_ids: list[str], what: str) -> None:
    wait_until(
        lambda: (
            sql(
                "SELECT count(*) FROM jobs WHERE id = ANY(CAST(:ids AS uuid[]))"
                " AND status = 'succeeded'",
                ids=job_ids,
            )
            == [(len(job_ids),)]
        ),
        what,
        timeout=60,
    )


def test_a_busy_worker_takes_its_messages_without_a_brpop_each(
    fake_gateway: Any, worker_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker whose queue holds more jobs than it has threads takes the next ones in the
    round trip that carries its acks, not one BRPOP per message as kombu reads, and still
    runs each job once and leaves nothing in the unacked bookkeeping. Counted on a Redis of
    its own, where nothing else sends BRPOP."""

    jobs = 40
    marker = f"busy-{uuid.uuid4().hex[:8]}"
    fake_gateway.add_faults(Fault(latency=0.1, match=marker, times=jobs))
    with _private_broker(monkeypatch) as (broker, queue):
        job_ids = _send_by_name(broker.url, queue, [f"{marker} {i}" for i in range(jobs)])
        assert redis.Redis.from_url(broker.url).llen(queue) == jobs
        # Started with every message waiting: its four threads are busy from the start.
        worker = worker_factory(
            env={"CELERY_BROKER_URL": broker.url, "EZQ_QUEUE": queue, "EZQ_WORKER_CONCURRENCY": "4"}
        )
        _wait_succeeded(job_ids, "every job succeeded")
        client = redis.Redis.from_url(broker.url)
        stats = client.info("commandstats")
        brpops = stats.get("cmdstat_brpop", {}).get("calls", 0)
        # kombu's reading takes 37 or more (one per message once the threads are busy);
        # an idle worker's BRPOP returns empty once a second.
        assert brpops <= 10, stats.get("cmdstat_brpop")
        assert stats.get("cmdstat_evalsha", {}).get("calls", 0) >= 5
        wait_until(lambda: client.hlen("unacked") == 0, "every message acknowledged")
        assert client.llen(queue) == 0
        assert requests_for(fake_gateway, marker) == jobs
        worker.stop()
        assert "could not" not in worker.log()


def test_a_worker_outlives_its_broker_lost_while_jobs_are_in_flight(
    fake_gateway: Any, worker_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis goes away while the worker's threads wait on the gateway, and comes back
    (empty) before those jobs end: the jobs are recorded, their acks (made on a channel
    whose close failed with Redis away) do not stop the worker, and it runs the next job.
    No job is called twice. An ack on a channel that did close is pinned above
    (``test_a_message_settled_after_its_channel_closed_changes_nothing``)."""

    jobs = 4
    marker = f"lost-{uuid.uuid4().hex[:8]}"
    fake_gateway.add_faults(Fault(latency=3.0, match=marker, times=jobs))
    with _private_broker(monkeypatch) as (broker, queue):
        worker = worker_factory(
            env={
                "CELERY_BROKER_URL": broker.url,
                "EZQ_QUEUE": queue,
                "EZQ_WORKER_CONCURRENCY": "4",
                "EZQ_GATEWAY_READ_TIMEOUT": "20",  # the calls outlast the outage
            }
        )

        job_ids = _send_by_name(broker.url, queue, [f"{marker} {i}" for i in range(jobs)])
        wait_until(lambda: requests_for(fake_gateway, marker) == jobs, "every job's call under way")
        broker.stop()
        wait_until(lambda: "Connection to broker lost" in worker.log(), "the loss seen")
        broker.start()
        wait_until(lambda: worker.log().count("Connected to ") == 2, "connected again")
        _wait_succeeded(job_ids, "every job recorded")
        _wait_succeeded(_send_by_name(broker.url, queue, [f"{marker} after"]), "the next job")
        assert worker.proc.poll() is None, worker.log()
        assert "Unrecoverable error" not in worker.log()
        assert requests_for(fake_gateway, marker) == jobs + 1
        worker.stop()

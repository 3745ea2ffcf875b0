"""The Redis transport keeps one client per connection pool for the commands it sends
outside the event loop, and makes a new one when kombu replaces the pool."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection

from service.worker.transport import Channel, Transport
from tests.conftest import REDIS_URL


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

"""The Redis transport keeps one client per connection pool for the commands it sends
outside the event loop, and makes a new one when kombu replaces the pool."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

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


def test_threads_sending_through_the_shared_client_lose_nothing(channel: Channel) -> None:
    key = f"ezq-test-transport-{uuid.uuid4().hex[:8]}"
    per_thread, threads = 200, 8

    def push(thread: int) -> None:
        for i in range(per_thread):
            with channel.conn_or_acquire() as client:
                client.lpush(key, f"{thread}:{i}")

    workers = [threading.Thread(target=push, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    with channel.conn_or_acquire() as client:
        pushed = {item.decode() for item in client.lrange(key, 0, -1)}
        client.delete(key)
    assert pushed == {f"{t}:{i}" for t in range(threads) for i in range(per_thread)}


def test_the_event_loop_keeps_its_own_client(channel: Channel) -> None:
    with channel.conn_or_acquire() as commands:
        # The BRPOP poller's client runs on the asynchronous pool, never the shared one.
        assert channel.client is not commands
        assert channel.client.connection_pool is not commands.connection_pool

"""A read of the Redis transport takes the messages waiting behind the one BRPOP returned,
up to the consumer's free threads, each entered in the unacked bookkeeping in the same
Lua step that pops it: nothing is ever off its queue and out of the bookkeeping, order and
priority hold, what is not a message is set aside, and what a failing consumer did not
take goes back first in line."""

from __future__ import annotations

import base64
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Queue
from redis import client as redis_client

from service.worker.transport import TAKE_AT_MOST, Channel, Transport
from tests.conftest import REDIS_URL, sql


class Taker:
    """A private queue and bookkeeping, a consumer on it, and what the consumer got."""

    def __init__(self, connection: Connection, name: str) -> None:
        self.connection = connection
        self.name = name
        channel = connection.default_channel
        assert isinstance(channel, Channel)
        self.channel = channel
        self.got: list[Any] = []
        self.fail_on: str | None = None

    def publish(self, *bodies: str, priority: int | None = None) -> None:
        for body in bodies:
            properties = {} if priority is None else {"priority": priority}
            message = self.channel.prepare_message(body, **properties)
            self.channel.basic_publish(message, exchange="", routing_key=self.name)

    def consume(self, prefetch: int, *, no_ack: bool = False) -> Consumer:
        def received(_body: Any, message: Any) -> None:
            if _text(message) == self.fail_on:
                raise RuntimeError("the consumer failed")
            self.got.append(message)

        consumer = Consumer(
            self.channel, [Queue(self.name)], callbacks=[received], no_ack=no_ack, accept=None
        )
        consumer.qos(prefetch_count=prefetch)
        consumer.consume()
        return consumer

    def read_once(self) -> list[str]:
        """One event of the connection: one BRPOP read and what it took behind it."""
        before = len(self.got)
        self.connection.drain_events(timeout=5)
        return [_text(m) for m in self.got[before:]]

    def waiting(self) -> list[str]:
        """The queue's messages, the next to be taken first."""
        with self.channel.conn_or_acquire() as client:
            keys = [self.channel._q_for_pri(self.name, p) for p in self.channel.priority_steps]
            items = [item for key in keys for item in reversed(client.lrange(key, 0, -1))]
        return [_body(json.loads(item)) for item in items]

    def waiting_raw(self) -> list[dict[str, Any]]:
        with self.channel.conn_or_acquire() as client:
            keys = [self.channel._q_for_pri(self.name, p) for p in self.channel.priority_steps]
            return [
                json.loads(item) for key in keys for item in reversed(client.lrange(key, 0, -1))
            ]

    def entered(self) -> dict[str, Any]:
        """The bookkeeping: delivery tag -> [message, exchange, routing key]."""
        with self.channel.conn_or_acquire() as client:
            index = {t.decode() for t in client.zrange(self.channel.unacked_index_key, 0, -1)}
            entries = {
                t.decode(): json.loads(v)
                for t, v in client.hgetall(self.channel.unacked_key).items()
            }
        assert set(entries) == index, "the hash and its index disagree"
        return entries


def _text(message: Any) -> str:
    body = message.body
    return body.decode() if isinstance(body, bytes) else str(body)


def _body(payload: dict[str, Any]) -> str:
    body = payload["body"]
    if payload["properties"].get("body_encoding") == "base64":
        body = base64.b64decode(body).decode()
    return str(body)


@pytest.fixture
def taker() -> Iterator[Taker]:
    name = f"ezq-test-take-{uuid.uuid4().hex[:8]}"
    options = {"unacked_key": f"{name}:unacked", "unacked_index_key": f"{name}:unacked_index"}
    with Connection(REDIS_URL, transport=Transport, transport_options=options) as connection:
        made = Taker(connection, name)
        made.channel.queue_declare(name)
        made.channel.connection.loop_thread = threading.get_ident()
        try:
            yield made
        finally:
            with made.channel.conn_or_acquire() as client:
                steps = made.channel.priority_steps
                client.delete(
                    *(made.channel._q_for_pri(name, p) for p in steps),
                    options["unacked_key"],
                    options["unacked_index_key"],
                )


def test_one_read_takes_what_waits_up_to_the_free_threads(taker: Taker) -> None:
    bodies = [f"job {i}" for i in range(10)]
    taker.publish(*bodies)
    taker.consume(prefetch=6)
    assert taker.read_once() == bodies[:6]
    assert taker.waiting() == bodies[6:]
    entered = taker.entered()
    assert set(entered) == {m.delivery_tag for m in taker.got}
    for message in taker.got:
        # The entry kombu's own bookkeeping writes, that a restore reads back.
        raw, exchange, routing_key = entered[message.delivery_tag]
        assert raw == message._raw
        assert (exchange, routing_key) == ("", taker.name)
    assert not taker.channel.qos.can_consume()
    assert not taker.channel.qos._entered
    for message in taker.got[:4]:
        message.ack()
    taker.channel.qos.send_acks()
    assert len(taker.entered()) == 2
    assert taker.read_once() == bodies[6:10]
    assert taker.waiting() == []
    assert len(taker.entered()) == 6


def test_a_read_takes_no_more_than_its_bound(taker: Taker) -> None:
    bodies = [f"job {i}" for i in range(TAKE_AT_MOST + 5)]
    taker.publish(*bodies)
    taker.consume(prefetch=100)
    assert taker.read_once() == bodies[: TAKE_AT_MOST + 1]
    assert taker.waiting() == bodies[TAKE_AT_MOST + 1 :]


def test_no_free_thread_no_message_taken_ahead(taker: Taker) -> None:
    taker.publish("a", "b", "c")
    taker.consume(prefetch=1)
    assert taker.read_once() == ["a"]
    assert taker.waiting() == ["b", "c"]
    assert len(taker.entered()) == 1


def test_a_consumer_that_does_not_acknowledge_takes_one_at_a_time(taker: Taker) -> None:
    taker.publish("a", "b", "c")
    taker.consume(prefetch=10, no_ack=True)
    assert taker.read_once() == ["a"]
    assert taker.waiting() == ["b", "c"]
    assert taker.entered() == {}


def test_higher_priorities_are_taken_first(taker: Taker) -> None:
    taker.publish("low 1", "low 2", priority=9)
    taker.publish("high 1", "high 2", priority=0)
    taker.consume(prefetch=10)
    assert taker.read_once() == ["high 1", "high 2", "low 1", "low 2"]


def test_what_is_not_a_message_ends_the_taking_and_is_set_aside_in_turn(
    taker: Taker, service_env: dict[str, str]
) -> None:
    """An item that is not a message is left where it was (the taking stops at it); the
    reads after take it on its own and set it aside, as they do any item BRPOP returns."""
    before = sql("SELECT coalesce(max(id), 0) FROM dead_letters")[0][0]
    taker.publish("first")
    bad_body = json.dumps(
        {
            "body": "%%% not base64 %%%",
            "properties": {
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
                "delivery_info": {"exchange": "", "routing_key": taker.name},
            },
            "headers": {},
        }
    ).encode()
    garbage = [b"not json", b"[1, 2, 3]", b'{"body": "e30="}', bad_body]
    with taker.channel.conn_or_acquire() as client:
        for raw in garbage:
            client.lpush(taker.name, raw)
    taker.publish("last")
    taker.consume(prefetch=10)
    assert taker.read_once() == ["first"]
    with taker.channel.conn_or_acquire() as client:
        assert client.lindex(taker.name, -1) == garbage[0], "not left first in line"
    got: list[str] = []
    for _ in range(len(garbage) + 1):
        got += taker.read_once()
        if got:
            break
    assert got == ["last"]
    assert set(taker.entered()) == {m.delivery_tag for m in taker.got}
    letters = sql(
        "SELECT raw, reason FROM dead_letters WHERE id > :b AND (queue = :q OR queue IS NULL)"
        " ORDER BY id",
        b=before,
        q=taker.name,
    )
    kept = [bytes(raw) for raw, _ in letters]
    for raw in garbage[:3]:
        assert raw in kept
    assert any("not valid base64" in reason for _, reason in letters)


def test_json_lua_reads_and_python_does_not_is_set_aside_and_left_out(
    taker: Taker, service_env: dict[str, str]
) -> None:
    """kombu's JSON refuses what Lua's accepts (here an object kombu would decode as a
    type it does not know): taken and entered by Lua, then set aside and removed from the
    bookkeeping, so that no restore ever meets it."""
    before = sql("SELECT coalesce(max(id), 0) FROM dead_letters")[0][0]
    taker.publish("first")
    tag = str(uuid.uuid4())
    odd = json.dumps(
        {
            "body": "e30=",
            "properties": {
                "body_encoding": "base64",
                "delivery_tag": tag,
                "delivery_info": {"exchange": "", "routing_key": taker.name},
            },
            "headers": {"x": {"__type__": "unknown", "__value__": 1}},
        }
    ).encode()
    with taker.channel.conn_or_acquire() as client:
        client.lpush(taker.name, odd)
    taker.publish("last")
    taker.consume(prefetch=10)
    assert taker.read_once() == ["first", "last"]
    assert tag not in taker.entered()
    assert len(taker.entered()) == 2
    assert sql("SELECT count(*) FROM dead_letters WHERE id > :b AND raw = :r", b=before, r=odd) == [
        (1,)
    ]


def test_an_entry_no_restore_can_read_is_set_aside(
    taker: Taker, service_env: dict[str, str]
) -> None:
    """The visibility sweep restores entry after entry; one it cannot read is set aside
    and removed instead of stopping it."""
    before = sql("SELECT coalesce(max(id), 0) FROM dead_letters")[0][0]
    qos = taker.channel.qos
    with taker.channel.conn_or_acquire() as client:
        client.zadd(qos.unacked_index_key, {"unreadable": 1.0})
        client.hset(qos.unacked_key, "unreadable", b'[{"headers": {"x": 0x1F}}, "", "q"]')
    qos.restore_by_tag("unreadable")
    assert taker.entered() == {}
    assert sql("SELECT count(*) FROM dead_letters WHERE id > :b", b=before) == [(1,)]


def test_a_failing_consumer_gives_back_what_it_did_not_take(taker: Taker) -> None:
    bodies = [f"job {i}" for i in range(6)]
    taker.publish(*bodies)
    taker.fail_on = "job 2"
    taker.consume(prefetch=10)
    with pytest.raises(RuntimeError, match="the consumer failed"):
        taker.read_once()
    assert [_text(m) for m in taker.got] == ["job 0", "job 1"]
    # job 2 was handed over (and entered, as kombu enters a message BRPOP returns); the
    # ones behind it are first in line again, as they were, and out of the bookkeeping.
    assert taker.waiting() == bodies[3:]
    assert not any(_redelivered(raw) for raw in taker.waiting_raw())
    assert len(taker.entered()) == 3
    assert not taker.channel.qos._entered
    taker.fail_on = None
    assert taker.read_once() == bodies[3:]


def test_a_consumer_failing_on_the_first_message_gives_back_the_rest(taker: Taker) -> None:
    bodies = [f"job {i}" for i in range(4)]
    taker.publish(*bodies)
    taker.fail_on = "job 0"
    taker.consume(prefetch=10)
    with pytest.raises(RuntimeError, match="the consumer failed"):
        taker.read_once()
    assert taker.waiting() == bodies[1:]
    assert len(taker.entered()) == 1  # job 0, as kombu's own read leaves it
    taker.fail_on = None
    assert taker.read_once() == bodies[1:]


def _redelivered(payload: dict[str, Any]) -> bool:
    return bool(
        payload.get("headers", {}).get("redelivered")
        or payload["properties"]["delivery_info"].get("redelivered")
    )


class RoundTrips:
    """Counts the Redis round trips made while it is open (a command, or a pipeline)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        execute_command = redis_client.Redis.execute_command
        execute = redis_client.Pipeline.execute

        def counted_command(client: Any, *args: Any, **options: Any) -> Any:
            if not isinstance(client, redis_client.Pipeline):
                self.count += 1
            return execute_command(client, *args, **options)

        def counted_pipeline(pipe: Any, *args: Any, **options: Any) -> Any:
            self.count += 1
            return execute(pipe, *args, **options)

        monkeypatch.setattr(redis_client.Redis, "execute_command", counted_command)
        monkeypatch.setattr(redis_client.Pipeline, "execute", counted_pipeline)


def _turn(taker: Taker) -> None:
    """One turn of the worker's loop before it polls (no hub here: kombu's BRPOP is not
    sent)."""
    taker.connection.transport._on_tick()


def test_a_busy_turn_takes_what_waits_with_its_acks_in_one_round_trip(
    taker: Taker, monkeypatch: pytest.MonkeyPatch
) -> None:
    bodies = [f"job {i}" for i in range(12)]
    taker.publish(*bodies)
    taker.consume(prefetch=4)
    assert taker.read_once() == bodies[:4]  # as many as it asked for: the queue may hold more
    for message in taker.got[:2]:
        message.ack()
    _turn(taker)  # the first take also loads its script into Redis
    assert [_text(m) for m in taker.got] == bodies[:6]
    acked = taker.got[2:4]
    for message in acked:
        message.ack()
    trips = RoundTrips(monkeypatch)
    _turn(taker)
    assert trips.count == 1
    assert [_text(m) for m in taker.got] == bodies[:8]
    assert taker.waiting() == bodies[8:]
    assert set(taker.entered()) == {m.delivery_tag for m in taker.got[4:]}
    assert not taker.channel.qos._unsent_acks
    assert not taker.channel.qos._entered
    assert not taker.channel.qos.can_consume()
    assert not taker.channel._in_poll  # no BRPOP was sent for them


def test_a_turn_with_no_free_thread_sends_only_its_acks(
    taker: Taker, monkeypatch: pytest.MonkeyPatch
) -> None:
    taker.publish(*(f"job {i}" for i in range(6)))
    taker.consume(prefetch=3)
    taker.read_once()
    trips = RoundTrips(monkeypatch)
    _turn(taker)  # every thread busy: nothing to take, no ack to send
    assert trips.count == 0
    assert len(taker.got) == 3


def test_a_short_take_hands_the_queue_back_to_brpop(taker: Taker) -> None:
    bodies = [f"job {i}" for i in range(5)]
    taker.publish(*bodies)
    taker.consume(prefetch=4)
    assert taker.read_once() == bodies[:4]
    for message in taker.got:
        message.ack()
    _turn(taker)  # three free threads, one message waiting: taken, and the queue is empty
    assert [_text(m) for m in taker.got] == bodies
    assert not taker.channel._queue_may_hold_more
    assert len(taker.entered()) == 1
    taker.publish("job 5")
    _turn(taker)  # nothing taken without BRPOP now
    assert len(taker.got) == 5
    assert taker.read_once() == ["job 5"]


def test_a_read_that_finds_fewer_than_it_asked_for_leaves_taking_to_brpop(
    taker: Taker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that keeps up (its queue mostly empty) makes no round trip that would find
    nothing: it waits on BRPOP."""
    taker.publish("a", "b")
    taker.consume(prefetch=10)
    assert taker.read_once() == ["a", "b"]
    taker.got[0].ack()
    trips = RoundTrips(monkeypatch)
    _turn(taker)
    assert trips.count == 1  # the ack alone
    assert len(taker.got) == 2


def test_priorities_and_order_hold_when_taken_without_brpop(taker: Taker) -> None:
    taker.publish("low 0", priority=9)
    taker.consume(prefetch=1)
    assert taker.read_once() == ["low 0"]
    taker.publish("low 1", "low 2", priority=9)
    taker.publish("high 1", "high 2", priority=0)
    taker.channel.qos.prefetch_count = 10
    taker.got[0].ack()
    _turn(taker)
    assert [_text(m) for m in taker.got[1:]] == ["high 1", "high 2", "low 1", "low 2"]


def test_what_is_not_a_message_stops_a_take_and_brpop_sets_it_aside(
    taker: Taker, service_env: dict[str, str]
) -> None:
    taker.publish("a")
    taker.consume(prefetch=1)
    assert taker.read_once() == ["a"]
    key = taker.channel._q_for_pri(taker.name, 0)
    with taker.channel.conn_or_acquire() as client:
        client.lpush(key, b"not json at all")
    taker.publish("b")
    before = sql("SELECT coalesce(max(id), 0) FROM dead_letters")[0][0]
    taker.got[0].ack()
    taker.channel.qos.prefetch_count = 5
    _turn(taker)  # stops at the item: pushed back, nothing taken, BRPOP reads next
    assert len(taker.got) == 1
    assert not taker.channel._queue_may_hold_more
    assert taker.read_once() == []
    assert sql("SELECT count(*) FROM dead_letters WHERE id > :b", b=before) == [(1,)]
    assert taker.read_once() == ["b"]


def _a_full_read_then_an_ack(taker: Taker) -> str:
    """Two of four waiting messages taken by a read (its take came back full), the first
    of them acknowledged on the loop's thread; its delivery tag."""
    taker.publish(*(f"job {i}" for i in range(4)))
    taker.consume(prefetch=2)
    assert taker.read_once() == ["job 0", "job 1"]
    taker.got[0].ack()
    return str(taker.got[0].delivery_tag)


def test_a_take_lost_with_the_connection_keeps_its_acks(
    taker: Taker, monkeypatch: pytest.MonkeyPatch
) -> None:
    tag = _a_full_read_then_an_ack(taker)
    qos = taker.channel.qos

    def lost(*_args: Any, **_kwargs: Any) -> Any:
        raise redis.exceptions.ConnectionError("Connection reset by peer")

    monkeypatch.setattr(qos, "_take_waiting", lost)
    with pytest.raises(redis.exceptions.ConnectionError):
        _turn(taker)  # as a BRPOP that cannot be sent: the worker reconnects
    assert qos._unsent_acks == [tag]
    assert taker.channel._queue_may_hold_more
    monkeypatch.undo()
    _turn(taker)  # the connection is back: the acks go with the take
    assert tag not in taker.entered()
    assert len(taker.got) == 3


def test_a_take_refused_by_redis_falls_back_to_brpop(
    taker: Taker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    tag = _a_full_read_then_an_ack(taker)

    def refused(*_args: Any, **_kwargs: Any) -> Any:
        raise redis.exceptions.ResponseError("OOM command not allowed")

    monkeypatch.setattr(taker.channel.qos, "_take_waiting", refused)
    with caplog.at_level(logging.WARNING, logger="service.worker.transport"):
        _turn(taker)
    assert "could not take waiting messages: ResponseError" in caplog.text
    assert not taker.channel._queue_may_hold_more
    assert tag not in taker.entered()  # the turn's acks were sent on their own
    assert taker.read_once() == ["job 2"]

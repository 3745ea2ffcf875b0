"""The Redis transport, made safe against messages that are not kombu envelopes, and
acknowledging in batches.

kombu decodes every item it pops from a queue as JSON and builds a message from it inside
the worker's event loop; anything else (not JSON, a JSON array or string, a body that is
not base64, an envelope without properties) raises there and ends the worker. Here such
an item is kept aside as a dead letter instead, and the worker goes on.

kombu acknowledges a message by removing it from the unacked bookkeeping (a sorted set
and a hash) in a pipeline of its own: one Redis round trip per job, on the event loop's
thread, which also reads every message. Acks made on that thread are collected instead
and removed together once per turn of the loop, before it polls again (see ``QoS``); when
the loop closes, the acks made after its last turn (kombu's hub runs the callbacks left
for a turn as it closes: Celery's late acks of the tasks that ended during a warm
shutdown) go to Redis at once.
"""

# kombu carries no type information.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
from typing import Any

from kombu.transport import redis, virtual

from service.worker.deadletter import set_aside

log = logging.getLogger(__name__)


class QoS(redis.QoS):
    """kombu's unacked bookkeeping, its removals batched on the event loop's thread.

    An ack made on the loop's thread (Celery hands every ack of the threads pool to it)
    is marked done at once, so the channel may take its next message, and its removal from
    Redis waits for ``send_acks`` at the end of the loop's turn: one ZREM and one HDEL for
    all of them. Acks made anywhere else go to Redis at once, as kombu sends them.

    A removal lost to a crash or a Redis error leaves the message in the bookkeeping, as an
    ack that failed in kombu does: it is delivered again after the visibility timeout and
    finds its job ended. This channel sends its pending removals before it restores
    anything (its visibility sweep, its close); another worker's sweep could give back a
    message acknowledged in this turn only if it is older than the visibility timeout,
    the race kombu's acks have with the sweep, here longer by the rest of one turn.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unsent_acks: list[str] = []
        self._unsent_lock = threading.Lock()

    def ack(self, delivery_tag: str) -> None:
        if threading.get_ident() != self.channel.connection.loop_thread:
            super().ack(delivery_tag)
            return
        with self._unsent_lock:
            self._unsent_acks.append(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def send_acks(self) -> int:
        """Remove the acknowledged messages from Redis's bookkeeping; how many."""
        with self._unsent_lock:
            tags, self._unsent_acks = self._unsent_acks, []
        if tags:
            with self.pipe_or_acquire() as pipe:
                pipe.zrem(self.unacked_index_key, *tags).hdel(self.unacked_key, *tags).execute()
        return len(tags)

    def send_acks_or_warn(self) -> None:
        """``send_acks``, a failure logged: those messages come back after the visibility
        timeout."""
        try:
            self.send_acks()
        except Exception as exc:
            log.warning("could not acknowledge messages on Redis: %s", type(exc).__name__)

    def restore_visible(self, *args: Any, **kwargs: Any) -> Any:
        self.send_acks()
        return super().restore_visible(*args, **kwargs)

    def restore_unacked(self, client: Any = None) -> Any:
        self.send_acks()
        return super().restore_unacked(client)

    def restore_unacked_once(self, stderr: Any = None) -> Any:
        # A closing channel restores nothing when every message it took was acknowledged;
        # the acks of the loop's last turn must reach Redis all the same. A channel closed
        # because Redis is gone closes quietly, as kombu's does when it has nothing to
        # restore.
        self.send_acks_or_warn()
        return super().restore_unacked_once(stderr)


def envelope_problem(payload: Any) -> str | None:
    """Why ``payload`` cannot be a kombu envelope, or None when it can."""
    if not isinstance(payload, dict):
        return f"the message is a JSON {type(payload).__name__}, not an object"
    properties = payload.get("properties")
    if not isinstance(properties, dict):
        return "the envelope has no 'properties' object"
    if "delivery_tag" not in properties:
        return "the envelope's properties have no 'delivery_tag'"
    if not isinstance(properties.get("delivery_info", {}), dict):
        return "the envelope's 'delivery_info' is not an object"
    if not isinstance(payload.get("headers", {}), dict | None):
        return "the envelope's 'headers' is not an object"
    body = payload.get("body")
    if body and not isinstance(body, str):
        return "the envelope's 'body' is not a string"
    if body and properties.get("body_encoding") == "base64":
        try:
            base64.b64decode(body.encode(), validate=True)
        except (binascii.Error, ValueError):
            return "the body is not valid base64"
    return None


class Channel(redis.Channel):
    QoS = QoS

    # The client kombu's commands go through outside the event loop (publishes, acks, the
    # unacked bookkeeping), kept for as long as the channel's connection pool lives.
    _commands_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        """kombu builds a new Redis client for every command it sends outside the event
        loop: 4 to 5 per job (the unacked bookkeeping, the ack, each task event), and
        building one (its table of response callbacks) cost about 5 % of a worker's CPU
        (``py-spy``, 0 ms gateway latency). A client holds no connection of its own and
        may be shared between threads (it takes one from the pool per command), so one
        is kept per pool; kombu makes a new pool after a disconnect, and so a new client.
        """
        if asynchronous:
            return super()._create_client(asynchronous=True)
        pool = self.pool
        client = self._commands_client
        if client is None or client.connection_pool is not pool:
            client = super()._create_client()
            self._commands_client = client
        return client

    def _brpop_read(self, **options: Any) -> Any:
        try:
            return super()._brpop_read(**options)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError: not JSON text
            set_aside(_raw_of(exc), f"not a JSON message: {type(exc).__name__}", kind="not_json")
            return True

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        try:
            return super()._get(queue)
        except ValueError as exc:
            set_aside(
                _raw_of(exc),
                f"not a JSON message: {type(exc).__name__}",
                kind="not_json",
                queue=queue,
            )
            raise self.Empty() from None  # type: ignore[attr-defined]


class Transport(redis.Transport):
    Channel = Channel
    # The thread the worker's event loop runs on, once it has turned (None before, and
    # outside a worker): acks made there are batched (see ``QoS``).
    loop_thread: int | None = None
    # The loop's per-turn and closing callbacks, once registered with it.
    _ticks: set[Any] | None = None
    _closes: set[Any] | None = None

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        super().register_with_event_loop(connection, loop)
        loop.on_tick.add(self._send_acks)
        loop.on_close.add(self._loop_closed)
        self._ticks, self._closes = loop.on_tick, loop.on_close

    def _loop_closed(self, _loop: Any) -> None:
        """The loop closes: its turns are over. kombu's hub then runs the callbacks still
        waiting for a turn on this thread (Celery's late acks of the tasks that ended during
        a warm shutdown): sent at once from now on, or nothing would send them."""
        self._send_acks()
        self.loop_thread = None

    def close_connection(self, connection: Any) -> None:
        super().close_connection(connection)  # closing its channels sends their acks
        # The loop outlives a connection lost and made again: a transport closed stops
        # being called at each turn.
        if self._ticks is not None:
            self._ticks.discard(self._send_acks)
        if self._closes is not None:
            self._closes.discard(self._loop_closed)

    def _send_acks(self) -> None:
        """At the end of each turn of the loop, before it polls: send the turn's acks."""
        self.loop_thread = threading.get_ident()
        for channel in self.channels:
            qos = channel._qos
            if qos is not None and qos._unsent_acks:
                qos.send_acks_or_warn()

    def _deliver(self, message: Any, queue: str) -> None:
        problem = envelope_problem(message)
        if problem is not None:
            # Decoded already: kept as JSON again (the same text up to spacing).
            set_aside(
                json.dumps(message, default=repr).encode(),
                problem,
                kind="bad_envelope",
                queue=queue,
            )
            return
        super()._deliver(message, queue)


def _raw_of(exc: ValueError) -> Any:
    # json keeps the text it failed on; a UnicodeDecodeError keeps the bytes.
    return getattr(exc, "doc", None) or getattr(exc, "object", None) or b""

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

kombu takes one message per BRPOP and then enters it in the unacked bookkeeping in a
round trip of its own: two round trips on the event loop's thread for every message. Here
the round trip that enters the message BRPOP returned also takes, when the queue has more
and the worker has threads free for them, up to ``TAKE_AT_MOST`` more messages and enters
them in the bookkeeping in the same step (one Lua script, so that a message is never off
the queue without being in the bookkeeping); see ``Channel``. A busy worker (its last take
came back full) skips BRPOP: each turn of its loop takes what waits in the round trip that
also carries the turn's acks; see ``Channel.take_waiting``.
"""

# kombu carries no type information.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
from time import time
from typing import Any

from kombu.transport import redis, virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from service.worker.deadletter import set_aside

log = logging.getLogger(__name__)

# The most messages one round trip takes beyond the one BRPOP returned. The worker's free
# threads bound it too (the channel's prefetch); this bounds the time the event loop spends
# handing them over before it polls again.
TAKE_AT_MOST = 32

# The taking both scripts share: up to ``want`` messages popped from KEYS[3...], in that
# order, each entered in the bookkeeping (KEYS[1], KEYS[2]) at ``now``.
_POP_AND_ENTER = """
local taken = {}
for i = 3, #KEYS do
  while want > 0 do
    local item = redis.call('RPOP', KEYS[i])
    if not item then break end
    local tag, info
    local ok, message = pcall(cjson.decode, item)
    if ok and type(message) == 'table' and type(message.properties) == 'table' then
      tag = message.properties.delivery_tag
      info = message.properties.delivery_info
    end
    if type(tag) ~= 'string' or type(info) ~= 'table'
        or type(info.exchange) ~= 'string' or type(info.routing_key) ~= 'string' then
      redis.call('RPUSH', KEYS[i], item)
      return taken
    end
    want = want - 1
    redis.call('ZADD', KEYS[2], now, tag)
    redis.call('HSET', KEYS[1], tag, '[' .. item .. ',' .. cjson.encode(info.exchange)
      .. ',' .. cjson.encode(info.routing_key) .. ']')
    taken[#taken + 1] = KEYS[i]
    taken[#taken + 1] = item
    taken[#taken + 1] = tag
  end
end
return taken
"""

# KEYS: the unacked hash, its index, then the queue lists in the order BRPOP reads them.
# ARGV: the time, how many more to take, and the message BRPOP returned: its delivery tag
# and bookkeeping entry. That message is entered in the bookkeeping (as kombu's
# ``QoS.append`` does), then up to ARGV[2] more are popped and each entered the same way:
# its entry is the JSON array kombu writes, [message, exchange, routing key], built around
# the message's own text. An item that is not such an envelope to Lua's JSON is pushed
# back where it was and ends the taking: the next BRPOP returns it, and the worker sets
# it aside as it does any item BRPOP returns.
# Returns the flat list: queue key, item, the delivery tag it was entered under, for each
# message taken.
_TAKE_MORE = (
    """
local now, want = ARGV[1], tonumber(ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[3])
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
"""
    + _POP_AND_ENTER
)

# KEYS: as ``_TAKE_MORE``'s. ARGV: the time, how many to take, then the delivery tags of
# the messages acknowledged since the last round trip. Those leave the bookkeeping (what
# ``QoS.send_acks`` does), then up to ARGV[2] messages are taken as ``_TAKE_MORE`` takes
# them. Returns what it took, as ``_TAKE_MORE`` does.
_TAKE_WAITING = (
    """
local now, want = ARGV[1], tonumber(ARGV[2])
for i = 3, #ARGV do
  redis.call('ZREM', KEYS[2], ARGV[i])
  redis.call('HDEL', KEYS[1], ARGV[i])
end
"""
    + _POP_AND_ENTER
)

# KEYS: the unacked hash and its index. ARGV: queue key, item, delivery tag, for each
# message taken and not handed over, in the order they were taken. Each goes back to the
# end of its queue BRPOP reads next (the last taken first, so that the first taken is
# read first) and out of the bookkeeping, together.
_GIVE_BACK = """
for i = #ARGV - 2, 1, -3 do
  redis.call('RPUSH', ARGV[i], ARGV[i + 1])
  redis.call('ZREM', KEYS[2], ARGV[i + 2])
  redis.call('HDEL', KEYS[1], ARGV[i + 2])
end
return #ARGV / 3
"""


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
        # Delivery tags of messages taken by ``_TAKE_MORE``: already in Redis's bookkeeping.
        self._entered: set[str] = set()
        self._take_more: Any = None  # the scripts, registered on first use (EVALSHA)
        self._take_waiting: Any = None
        self._give_back: Any = None

    def append(self, message: Any, delivery_tag: str) -> None:
        if delivery_tag in self._entered:
            self._entered.discard(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)
            return
        channel = self.channel
        if not channel._may_take_more:
            super().append(message, delivery_tag)
            return
        # The message BRPOP returned: entered with up to ``want`` more taken behind it.
        channel._may_take_more = False
        free = self.can_consume_max_estimate()
        most = channel.take_at_most
        want = most if free is None else min(most, free - 1)
        delivery = message.delivery_info
        entry = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        with channel.conn_or_acquire() as client:
            if self._take_more is None:
                self._take_more = client.register_script(_TAKE_MORE)
            taken = self._take_more(
                keys=[self.unacked_key, self.unacked_index_key, *channel._taking_from],
                args=[time(), max(0, want), delivery_tag, entry],
                client=client,
            )
        virtual.QoS.append(self, message, delivery_tag)
        channel._taken = _triples(taken)
        # As many as it asked for: the queue may hold more, taken directly next turn.
        channel._queue_may_hold_more = len(channel._taken) >= want

    def take_waiting(self, queue_keys: list[str], want: int) -> list[tuple[str, bytes, str]]:
        """Up to ``want`` messages off ``queue_keys`` (in that order), entered in the
        bookkeeping, in the round trip that also removes the acks not sent yet: what one
        turn of a busy worker's loop sends to Redis (see ``Channel.take_waiting``).

        Should the round trip fail, its acks stay to be sent (removing a removed entry
        does nothing), and what it may have taken is in the bookkeeping: restored after the
        visibility timeout, as any message a lost worker held.
        """
        with self._unsent_lock:
            acks, self._unsent_acks = self._unsent_acks, []
        try:
            with self.channel.conn_or_acquire() as client:
                if self._take_waiting is None:
                    self._take_waiting = client.register_script(_TAKE_WAITING)
                taken = self._take_waiting(
                    keys=[self.unacked_key, self.unacked_index_key, *queue_keys],
                    args=[time(), want, *acks],
                    client=client,
                )
        except BaseException:
            with self._unsent_lock:
                self._unsent_acks[:0] = acks
            raise
        return _triples(taken)

    def give_back(self, taken: list[tuple[str, bytes, str]]) -> None:
        """Messages taken ahead and not handed over: back to where the next read finds
        them first, as they were (not marked redelivered), and out of the bookkeeping."""
        if not taken:
            return
        for _key, _item, tag in taken:
            self._entered.discard(tag)
        with self.channel.conn_or_acquire() as client:
            if self._give_back is None:
                self._give_back = client.register_script(_GIVE_BACK)
            self._give_back(
                keys=[self.unacked_key, self.unacked_index_key],
                args=[value for message in taken for value in message],
                client=client,
            )

    def restore_by_tag(self, tag: Any, client: Any = None, leftmost: bool = False) -> None:
        """kombu's restore (the same transaction), except that an entry it cannot read
        (JSON that Lua read and Python does not) leaves the bookkeeping and is set aside
        as a dead letter, instead of raising and stopping every later restore of the
        visibility sweep."""
        unreadable: list[tuple[bytes, str]] = []

        def restore_transaction(pipe: Any) -> None:
            unreadable.clear()  # the transaction runs again when the entry changed
            entry = pipe.hget(self.unacked_key, tag)
            pipe.multi()
            self._remove_from_indices(tag, pipe)
            if entry:
                try:
                    message, exchange, routing_key = loads(bytes_to_str(entry))
                except ValueError as exc:
                    unreadable.append((entry, f"not a JSON message: {type(exc).__name__}"))
                    return
                self.channel._do_restore_message(message, exchange, routing_key, pipe, leftmost)

        with self.channel.conn_or_acquire(client) as conn:
            conn.transaction(restore_transaction, self.unacked_key)
        for entry, reason in unreadable:
            set_aside(entry, reason, kind="not_json")

    def ack(self, delivery_tag: str) -> None:
        transport = self.channel.connection
        if transport is None:
            # The worker lost its connection and closed this channel while the message's
            # task ran; closing gave back every message not acknowledged by then, this
            # one too, so nothing is left to remove from Redis. (Asking the closed
            # channel for the loop's thread raised an AttributeError, which Celery does
            # not catch: it stopped the worker.)
            log.info(
                "message %s acknowledged after its channel closed: the close gave it"
                " back to its queue, to be delivered again",
                delivery_tag,
            )
            virtual.QoS.ack(self, delivery_tag)
            return
        if threading.get_ident() != transport.loop_thread:
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
    """kombu's Redis channel, that sets aside what is not a message (see the module's
    docstring) and takes more than one message per round trip when it may.

    After BRPOP returns a message, the unacked bookkeeping's round trip takes up to
    ``TAKE_AT_MOST`` more (never more than the worker has threads free: the channel's
    prefetch), each entered in the bookkeeping by the same Lua script that pops it, so a
    crash leaves every message it took either on its queue or in the bookkeeping (restored
    after the visibility timeout); only BRPOP's own message has kombu's window between its
    pop and its entry. They are handed to the consumer in order, before the loop polls
    again. With an empty queue a read makes kombu's two round trips: the script replaces
    kombu's pipeline.
    """

    QoS = QoS
    # 0: one message per read, as kombu takes them.
    take_at_most = TAKE_AT_MOST
    # Set while the message BRPOP returned is being delivered: its bookkeeping may take
    # more (see ``QoS.append``), from these lists, in BRPOP's order.
    _may_take_more = False
    _taking_from: list[str] = []
    # What that round trip took: queue key, raw item, the delivery tag it was entered in
    # the bookkeeping under.
    _taken: list[tuple[str, bytes, str]] = []
    # Queues whose consumer does not acknowledge: nothing is taken ahead for them (their
    # messages are never entered in the bookkeeping).
    _no_ack_queues: frozenset[str] = frozenset()
    # Set when the last take got as many messages as it asked for: the queue may hold
    # more, and the loop's next turn takes them without BRPOP (see ``take_waiting``).
    _queue_may_hold_more = False

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

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if no_ack:
            self._no_ack_queues = self._no_ack_queues | {queue}
        else:
            self._no_ack_queues = self._no_ack_queues - {queue}
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def _takes_ahead_from(self, queues: list[str]) -> bool:
        return bool(
            self.take_at_most
            and not self.global_keyprefix
            and not self._no_ack_queues.intersection(queues)
        )

    def _queue_keys(self, queues: list[str]) -> list[str]:
        """The lists behind ``queues``, in the order BRPOP reads them."""
        return [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]

    def take_waiting(self) -> None:
        """On a turn of the worker's loop, before it polls: when the last take found as
        many messages as it asked for, take what waits now (up to the free threads) in
        the round trip that also sends the acks, and hand it to the consumer, instead of
        sending BRPOP. A busy worker then makes one round trip to Redis per turn instead
        of three (the acks, BRPOP, the bookkeeping) and a poll for BRPOP's reply. When
        the take comes back short, the queue is empty: BRPOP waits for the next message.
        """
        qos = self._qos
        if (
            not self._queue_may_hold_more
            or self._in_poll
            or self._closing
            or qos is None
            or not self.active_queues
            or not qos.can_consume()
        ):
            return
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not self._takes_ahead_from(queues):
            self._queue_may_hold_more = False
            return
        free = qos.can_consume_max_estimate()
        most = self.take_at_most + 1
        want = most if free is None else min(most, free)
        try:
            taken = qos.take_waiting(self._queue_keys(queues), want)
        except self.connection_errors:
            raise  # as BRPOP's would: the worker reconnects
        except Exception as exc:
            # BRPOP then reads as kombu does; taking directly is tried again after a read
            # that finds the queue full.
            self._queue_may_hold_more = False
            log.warning("could not take waiting messages: %s", type(exc).__name__)
            return
        self._queue_may_hold_more = len(taken) >= want
        self._deliver_taken(taken)

    def _brpop_read(self, **options: Any) -> Any:
        queues = self._queue_cycle.consume(len(self.active_queues))
        if self._takes_ahead_from(queues):
            self._taking_from = self._queue_keys(queues)
            self._may_take_more = True
        try:
            read = super()._brpop_read(**options)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError: not JSON text
            set_aside(
                _raw_of(exc),
                f"not a JSON message: {type(exc).__name__}",
                kind="not_json",
                queue=_popped_queue(exc),
            )
            read = True
        except BaseException:
            self._give_back(self._taken_now())
            raise
        self._deliver_taken(self._taken_now())
        return read

    def _taken_now(self) -> list[tuple[str, bytes, str]]:
        self._may_take_more = False
        taken, self._taken = self._taken, []
        return taken

    def _deliver_taken(self, taken: list[tuple[str, bytes, str]]) -> None:
        """Hand the messages taken behind BRPOP's to the consumer, in order. Should one
        raise, the rest go back to their queues first, to be taken next."""
        for i, (key, item, tag) in enumerate(taken):
            try:
                self._deliver_one(key, item, tag)
            except BaseException:
                self._give_back(taken[i + 1 :])
                raise

    def _give_back(self, taken: list[tuple[str, bytes, str]]) -> None:
        try:
            self.qos.give_back(taken)
        except Exception as exc:
            # They stay in the bookkeeping: restored after the visibility timeout.
            log.warning(
                "could not give back %d messages taken ahead: %s", len(taken), type(exc).__name__
            )

    def _deliver_one(self, key: str, item: bytes, tag: str) -> None:
        queue = key.rsplit(self.sep, 1)[0]
        try:
            # As kombu reads what BRPOP returns.
            payload = loads(bytes_to_str(item))
        except ValueError as exc:  # JSON Lua reads and Python does not
            self.qos._remove_from_indices(tag).execute()
            set_aside(
                item, f"not a JSON message: {type(exc).__name__}", kind="not_json", queue=queue
            )
            return
        problem = envelope_problem(payload)
        if problem is not None or payload["properties"]["delivery_tag"] != tag:
            # Set aside (or entered by kombu under its own tag): this entry must not come
            # back after the visibility timeout.
            self.qos._remove_from_indices(tag).execute()
        if problem is not None:
            _set_aside_envelope(payload, problem, queue)
            return
        self.qos._entered.add(tag)
        self._queue_cycle.rotate(queue)
        try:
            # Checked above: kombu's delivery, without the transport's check again.
            redis.Transport._deliver(self.connection, payload, queue)
        finally:
            # Consumed by ``QoS.append``; left only when the message never reached it.
            self.qos._entered.discard(tag)

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
    # kombu's per-turn callbacks (they send BRPOP when a channel may consume), run from
    # ``_on_tick``.
    _poll_starts: tuple[Any, ...] = ()

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        before = set(loop.on_tick)
        super().register_with_event_loop(connection, loop)
        # The hub keeps its per-turn callbacks in a set, in no fixed order; a turn must
        # take what waits (with the acks) before kombu sends BRPOP, and send what acks are
        # left after. So kombu's callbacks run inside ours, in that order.
        self._poll_starts = tuple(tick for tick in loop.on_tick if tick not in before)
        for tick in self._poll_starts:
            loop.on_tick.discard(tick)
        loop.on_tick.add(self._on_tick)
        loop.on_close.add(self._loop_closed)
        self._ticks, self._closes = loop.on_tick, loop.on_close

    def _on_tick(self) -> None:
        """A turn of the loop, before it polls: take what waits (a busy worker's one round
        trip, which carries the turn's acks), let kombu send BRPOP where a channel still
        may consume, then send the acks no take carried."""
        self.loop_thread = threading.get_ident()
        for channel in self.channels:
            channel.take_waiting()
        for poll_start in self._poll_starts:
            poll_start()
        self._send_acks()

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
            self._ticks.discard(self._on_tick)
        if self._closes is not None:
            self._closes.discard(self._loop_closed)

    def _send_acks(self) -> None:
        """At the end of each turn of the loop, before it polls: send the turn's acks
        that no take carried."""
        self.loop_thread = threading.get_ident()
        for channel in self.channels:
            qos = channel._qos
            if qos is not None and qos._unsent_acks:
                qos.send_acks_or_warn()

    def _deliver(self, message: Any, queue: str) -> None:
        problem = envelope_problem(message)
        if problem is not None:
            _set_aside_envelope(message, problem, queue)
            return
        super()._deliver(message, queue)


def _triples(taken: list[bytes]) -> list[tuple[str, bytes, str]]:
    """A take script's flat reply as (queue key, item, delivery tag) for each message."""
    return [
        (key.decode(), item, tag.decode())
        for key, item, tag in zip(taken[::3], taken[1::3], taken[2::3], strict=True)
    ]


def _set_aside_envelope(message: Any, problem: str, queue: str) -> None:
    # Decoded already: kept as JSON again (the same text up to spacing).
    set_aside(json.dumps(message, default=repr).encode(), problem, kind="bad_envelope", queue=queue)


def _popped_queue(exc: ValueError) -> str | None:
    """The queue kombu's ``_brpop_read`` had popped the message from when its ``loads``
    failed: its local ``dest`` (the only place it is kept), else None."""
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        dest = frame.f_locals.get("dest") if frame.f_code.co_name == "_brpop_read" else None
        if isinstance(dest, str):
            return dest
        tb = tb.tb_next
    return None


def _raw_of(exc: ValueError) -> Any:
    # json keeps the text it failed on; a UnicodeDecodeError keeps the bytes.
    return getattr(exc, "doc", None) or getattr(exc, "object", None) or b""

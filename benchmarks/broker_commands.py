"""CPU per broker command sent outside the worker's event loop: kombu's Redis channel,
which builds a new Redis client for each one, against ours, which keeps one per pool.

Measured on what a worker sends per job: a Celery task event (a fanout ``PUBLISH``) and a
task message (``LPUSH``, as a next turn or a webhook delivery is published). Both
channels run side by side in alternating rounds against the local Redis; printed: the
median over rounds of CPU per message, and the ratio.

Then the other way: CPU and wall time per task message taken off a queue of waiting ones
by a consumer that acknowledges each (prefetch 64, the acks sent once per turn of the
loop, as the worker's event loop sends them), one message per read as kombu takes them
against ours, which takes those waiting behind BRPOP's in the same round trip as its
bookkeeping, and on the next turns takes what waits with the acks in one round trip,
without BRPOP.

    python -m benchmarks.broker_commands [--messages 3000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import threading
import time
from collections import deque
from typing import Any

from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.transport import redis as kombu_redis

from service.worker import transport

BROKER = os.environ.get("EZQ_BENCH_BROKER", "redis://127.0.0.1:6379/0")


class KombuClients(transport.Transport):
    """Our transport with kombu's own client handling: a new client per command."""

    class Channel(transport.Channel):
        def _create_client(self, asynchronous: bool = False) -> Any:
            return kombu_redis.Channel._create_client(self, asynchronous)


def cpu_per_message(transport_class: type[Any], kind: str, messages: int) -> float:
    with Connection(BROKER, transport=transport_class) as connection:
        channel = connection.channel()
        if kind == "event":
            producer = Producer(channel, exchange=Exchange("ezq-bench-events", type="fanout"))
            routing_key = "task.started"
        else:
            queue = Queue(f"ezq-bench-{secrets.token_hex(4)}")
            queue(channel).declare()
            producer = Producer(channel, exchange=queue.exchange)
            routing_key = queue.routing_key
        body = {"type": "task-started", "uuid": secrets.token_hex(16), "hostname": "bench"}
        for _ in range(100):  # warm
            producer.publish(body, routing_key=routing_key)
        started = time.process_time()
        for _ in range(messages):
            producer.publish(body, routing_key=routing_key)
        spent = (time.process_time() - started) / messages
        if kind == "queue":
            queue(channel).delete()
        return spent


class OneAtATime(transport.Transport):
    """Our transport taking one message per read, as kombu does."""

    class Channel(transport.Channel):
        take_at_most = 0


class BehindBrpopOnly(transport.Transport):
    """Our transport taking more only behind the message BRPOP returned: every turn
    sends its acks, BRPOP and the bookkeeping's script."""

    class Channel(transport.Channel):
        def take_waiting(self) -> None:
            pass


def taking(
    transport_class: type[Any], messages: int, prefetch: int, busy: int | None
) -> tuple[float, float]:
    """CPU and wall seconds per message taken off a queue holding ``messages``.

    ``busy``: None, the consumer acknowledges each message as it gets it (every thread
    free at each turn); a number, it holds every message it got and acknowledges that
    many of the oldest at each turn of the loop, as a worker whose threads are all busy
    and end a few calls per turn does.
    """
    name = f"ezq-bench-take-{secrets.token_hex(4)}"
    with Connection(BROKER, transport=transport_class) as connection:
        channel = connection.default_channel
        queue = Queue(name, Exchange(""), routing_key=name)
        queue(channel).declare()
        producer = Producer(channel)
        body = {"task": "ezq.chat_completion", "kwargs": {"job_id": secrets.token_hex(16)}}
        for _ in range(messages):
            producer.publish(body, exchange="", routing_key=name)
        held: list[Any] = []
        running: deque[Any] = deque()  # held and not acknowledged yet

        def received(_body: Any, message: Any) -> None:
            held.append(message)
            if busy is None:
                message.ack()
            else:
                running.append(message)

        consumer = Consumer(channel, [queue], callbacks=[received])
        consumer.qos(prefetch_count=prefetch)
        consumer.consume()
        loop = channel.connection
        loop.loop_thread = threading.get_ident()  # acks batched per turn
        qos = channel.qos
        started, wall = time.process_time(), time.perf_counter()
        while len(held) < messages:
            for _ in range(min(busy or 0, len(running))):
                running.popleft().ack()
            # A turn of the worker's loop: what waits is taken with the acks when the last
            # take came back full; BRPOP is read when that took nothing.
            before = len(held)
            loop._on_tick()
            if len(held) == before and qos.can_consume():
                connection.drain_events(timeout=5)
        spent = (time.process_time() - started) / messages
        elapsed = (time.perf_counter() - wall) / messages
        while running:
            running.popleft().ack()
        loop._send_acks()
        queue(channel).delete()
        return spent, elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"\nCPU per broker message (µs), {args.messages} x {args.rounds} rounds, medians")
    print(f"{'message':>24}{'kombu':>10}{'ours':>10}{'ratio':>8}")
    for kind, label in (("event", "task event (PUBLISH)"), ("queue", "task message (LPUSH)")):
        before: list[float] = []
        after: list[float] = []
        for _ in range(args.rounds):
            before.append(cpu_per_message(KombuClients, kind, args.messages))
            after.append(cpu_per_message(transport.Transport, kind, args.messages))
        b, a = statistics.median(before) * 1e6, statistics.median(after) * 1e6
        print(f"{label:>24}{b:>10.0f}{a:>10.0f}{a / b:>8.2f}")
    variants = (
        ("one/read", OneAtATime),
        ("BRPOP+more", BehindBrpopOnly),
        ("ours", transport.Transport),
    )
    for prefetch, busy, what in (
        (64, None, "each acknowledged at once"),
        (32, 2, "32 held, 2 acknowledged per turn (a busy worker)"),
    ):
        print(
            f"\nPer task message taken off a queue of {args.messages} (µs), prefetch"
            f" {prefetch}, {what}; {args.rounds} alternating rounds, medians"
        )
        print(f"{'':>24}" + "".join(f"{label:>12}" for label, _ in variants) + f"{'ratio':>8}")
        runs: dict[str, list[tuple[float, float]]] = {label: [] for label, _ in variants}
        for _ in range(args.rounds):
            for label, variant in variants:
                runs[label].append(taking(variant, args.messages, prefetch, busy))
        for i, name in ((0, "CPU"), (1, "wall time")):
            figures = [
                statistics.median(run[i] for run in runs[label]) * 1e6 for label, _ in variants
            ]
            ratio = figures[-1] / figures[1]
            print(f"{name:>24}" + "".join(f"{f:>12.0f}" for f in figures) + f"{ratio:>8.2f}")
    print("ratio: ours over BRPOP+more (the message BRPOP returned and those behind it, one read)")


if __name__ == "__main__":
    main()

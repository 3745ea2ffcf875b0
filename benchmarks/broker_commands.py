"""CPU per broker command sent outside the worker's event loop: kombu's Redis channel,
which builds a new Redis client for each one, against ours, which keeps one per pool.

Measured on what a worker sends per job: a Celery task event (a fanout ``PUBLISH``) and a
task message (``LPUSH``, as a next turn or a webhook delivery is published). Both
channels run side by side in alternating rounds against the local Redis; printed: the
median over rounds of CPU per message, and the ratio.

    python -m benchmarks.broker_commands [--messages 3000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import time
from typing import Any

from kombu import Connection, Exchange, Producer, Queue
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


if __name__ == "__main__":
    main()

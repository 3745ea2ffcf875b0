"""Threads every worker process runs beside its tasks: the heartbeat, the publisher of
due throttled jobs and the sweep.

They live and die with the worker process, so there is no separate beat process to
outlive it, and recovery needs nothing but running workers.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Collection
from typing import Any

import redis
from celery.signals import worker_ready, worker_shutdown
from sqlalchemy.exc import SQLAlchemyError

from service.config import Settings, get_settings
from service.flow.recheck import due_times
from service.flow.release import publish_due_throttled
from service.worker import deadletter
from service.worker.liveness import ActiveJobs, Heartbeat, WorkerIdentity
from service.worker.sweep import sweep

log = logging.getLogger(__name__)

# kombu's Redis transport keeps priority levels in lists named queue + this + level.
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_LEVELS = (3, 6, 9)

# kombu's Redis transport keeps taken, unacknowledged messages in this hash, each value
# the JSON list [message, exchange, routing_key].
_UNACKED = "unacked"

identity = WorkerIdentity.new()
active_jobs = ActiveJobs()
_threads: list[Any] = []


def redis_broker_depth(settings: Settings) -> Any:
    """A function that counts the run messages the Redis broker holds for the given queues,
    or None when it cannot tell (another broker, or Redis is unreachable)."""
    if not settings.broker_is_redis:
        return None
    client = redis.Redis.from_url(settings.celery_broker_url, socket_timeout=2)

    def depth(queues: Collection[str]) -> int | None:
        keys = [
            key
            for queue in queues
            for key in (queue, *(f"{queue}{_PRIORITY_SEP}{level}" for level in _PRIORITY_LEVELS))
        ]
        try:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.llen(key)
            pipe.hvals(_UNACKED)
            *lengths, unacked = pipe.execute()
        except redis.RedisError:
            return None
        # The unacked hash is shared by every queue on this Redis database: count only the
        # messages routed to these, or other queues' messages would hide a flushed queue.
        wanted = set(queues)
        return int(sum(lengths)) + sum(1 for entry in unacked if _routed_to(entry) in wanted)

    return depth


def _routed_to(entry: bytes) -> str | None:
    try:
        routing_key = json.loads(entry)[2]
    except (ValueError, IndexError, TypeError):
        return None
    return routing_key if isinstance(routing_key, str) else None


class Sweeper(threading.Thread):
    def __init__(self, settings: Settings) -> None:
        super().__init__(name="ezq-sweep", daemon=True)
        self.settings = settings
        self._stop_event = threading.Event()
        self._depth = redis_broker_depth(settings)

    def run(self) -> None:
        failing = False
        interval = self.settings.ezq_sweep_interval
        while not self._stop_event.wait(interval * random.uniform(0.5, 1.0)):
            try:
                sweep(self.settings, worker=identity.id, broker_depth=self._depth)
            except SQLAlchemyError as exc:
                if not failing:
                    log.warning("sweep: database unavailable: %s", type(exc).__name__)
                failing = True
                continue
            except Exception:  # the sweep must keep running whatever one round hit
                log.exception("sweep failed")
                continue
            failing = False

    def stop(self) -> None:
        self._stop_event.set()


class DuePublisher(threading.Thread):
    """Publishes the jobs held by a rate window when it frees them (their
    ``throttled_until``; ``service.flow.recheck``), whatever the sweep's interval."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="ezq-flow-due", daemon=True)
        self.settings = settings
        self._stopped = threading.Event()

    def run(self) -> None:
        failing = False
        due_times.reset()
        while not self._stopped.is_set():
            try:
                next_in = publish_due_throttled(self.settings)
            except SQLAlchemyError as exc:
                if not failing:
                    log.warning("due throttled jobs: database unavailable: %s", type(exc).__name__)
                failing = True
                next_in = None
            except Exception:  # it must keep running whatever one round hit
                log.exception("publishing due throttled jobs failed")
                next_in = None
            else:
                failing = False
            if next_in is not None:
                due_times.expect(next_in)
            due_times.wait(self.settings.ezq_flow_recheck)

    def stop(self) -> None:
        self._stopped.set()
        due_times.interrupt()


def start(settings: Settings) -> None:
    """Start the heartbeat, the publisher of due throttled jobs and, unless
    ``EZQ_SWEEP_INTERVAL`` is 0, the sweep."""
    deadletter.worker_name = identity.id
    heartbeat = Heartbeat(identity, active_jobs, settings)
    heartbeat.start()
    _threads.append(heartbeat)
    publisher = DuePublisher(settings)
    publisher.start()
    _threads.append(publisher)
    if settings.ezq_sweep_interval > 0:
        sweeper = Sweeper(settings)
        sweeper.start()
        _threads.append(sweeper)
    log.info(
        "worker %s: heartbeat every %.0fs, lease %.0fs, %s",
        identity.id,
        settings.ezq_heartbeat_interval,
        settings.lease_seconds,
        f"sweep every {settings.ezq_sweep_interval:.0f}s"
        if settings.ezq_sweep_interval
        else "sweep off",
    )
    if not settings.ezq_sweep_interval:
        log.warning(
            "the sweep is off in this worker (EZQ_SWEEP_INTERVAL=0): at least one worker on"
            " the database must run it, or dead workers' jobs, parked retries and webhook"
            " retries wait forever (ezq status and ezq_sweep_age_seconds say when it last ran)"
        )


def stop() -> None:
    for thread in reversed(_threads):
        thread.stop()
    _threads.clear()


@worker_ready.connect
def _on_worker_ready(**_: Any) -> None:
    start(get_settings())


@worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    stop()

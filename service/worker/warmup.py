"""What a job needs that is slow to make, made before the worker takes its first message;
and the garbage collector's thresholds for a process that holds many calls at once.

Without it the first jobs after a start pay for it: the gateway client (the SDKs' HTTP
clients and their TLS contexts, built under a lock every thread waits on) and the
database pool's connections (each a TCP connection and a new Postgres backend). Measured
at 80 jobs/s against a worker just started, the first half second of jobs waited up to
300 ms to reach the gateway, against 11 ms at the 99th percentile once warm.

Celery sends ``worker_ready`` before its event loop reads the first message, so what is
done here delays the first job by its own duration and no job by more.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from service.config import get_settings
from service.db.session import UNAVAILABLE, get_engine, pool_sizes, unavailable_because
from service.worker.affinity import pinned_cpu
from service.worker.collector import set_thresholds

log = logging.getLogger(__name__)


def open_database_pool() -> int:
    """Open the pool's steady connections (``EZQ_DB_POOL_SIZE``, at most the worker's
    concurrency) and return them to it; how many were opened. A database that cannot be
    reached now is not an error here: jobs connect when it can be."""
    engine = get_engine()
    size, _ = pool_sizes(get_settings())
    opened = 0
    with ExitStack() as held:
        # Held all at once, so that the pool keeps each one rather than reusing the first.
        for _ in range(size):
            try:
                held.enter_context(engine.connect())
            except UNAVAILABLE as exc:
                log.warning(
                    "warm-up: the database could not be reached (%s); jobs will connect"
                    " when they need it",
                    unavailable_because(exc),
                )
                break
            opened += 1
    return opened


def warm_up(make_gateway: Callable[[], Any]) -> None:
    """Build the gateway client (``make_gateway``), open the database pool and set the
    garbage collector's thresholds (``EZQ_WORKER_GC_THRESHOLDS``)."""
    started = time.perf_counter()
    make_gateway()
    connections = open_database_pool()
    thresholds = set_thresholds(get_settings().ezq_worker_gc_thresholds)
    cpu = pinned_cpu()
    log.info(
        "warm-up: gateway client built, %d database connections opened in %.0f ms;"
        " garbage collector thresholds %s; %s",
        connections,
        (time.perf_counter() - started) * 1e3,
        ",".join(str(t) for t in thresholds),
        f"pinned to CPU {cpu}" if cpu is not None else "not pinned to a CPU",
    )

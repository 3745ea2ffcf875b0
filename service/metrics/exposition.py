"""Serving the metrics: a port of its own for the worker, ``/metrics`` for ``ezq api``.

With ``PROMETHEUS_MULTIPROC_DIR`` set (an empty directory writable by every process),
counters and histograms of all processes on the host are summed, so a prefork worker or
``ezq api --workers N`` reports the whole; the directory must be emptied when they restart.
"""

from __future__ import annotations

import os
import threading

from prometheus_client import REGISTRY, CollectorRegistry, disable_created_metrics

_lock = threading.Lock()
_registry: CollectorRegistry | None = None


def registry() -> CollectorRegistry:
    """The registry to serve: every process's counters, plus the Postgres gauges."""
    global _registry
    with _lock:
        if _registry is None:
            # No ``*_created`` series beside each counter and histogram (undocumented, and
            # twice the series): a process-wide switch, read when the metrics are collected.
            disable_created_metrics()  # type: ignore[no-untyped-call]
            from service.metrics import definitions  # noqa: F401  (define them)
            from service.metrics.backlog import collector_for_settings

            if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                from prometheus_client import multiprocess

                chosen = CollectorRegistry()
                multiprocess.MultiProcessCollector(chosen)  # type: ignore[no-untyped-call]
            else:
                chosen = REGISTRY
            chosen.register(collector_for_settings())
            _registry = chosen
        return _registry


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Serve ``/metrics`` on ``port`` from a background thread of this process."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=host, registry=registry())


def render() -> tuple[bytes, str]:
    """The metrics page and its content type, for an HTTP handler."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(registry()), CONTENT_TYPE_LATEST

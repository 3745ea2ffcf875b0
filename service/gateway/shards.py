"""The gateway's HTTP connection pools, one per group of worker threads.

An SDK client's pool (httpcore's) scans every connection it holds each time a request
starts or ends, so one pool shared by a thousand threads costs a thousand steps per
request, and the SDKs' default keeps only 100 idle connections, so past 100 concurrent
calls most calls open a new TCP connection. Each worker thread is therefore given, on
first use and for good, one of several clients whose pool serves at most
``THREADS_PER_POOL`` threads and keeps a connection alive for each of them.
"""

from __future__ import annotations

import importlib
import itertools
import math
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any, Generic, TypeVar

from service.config import Settings

Client = TypeVar("Client")

THREADS_PER_POOL = 64


def http_package(sdk: ModuleType) -> ModuleType:
    """The HTTP package an SDK is built on (httpx or httpx2, depending on its version)."""
    client_class = sdk.DefaultHttpxClient
    base = next(c for c in client_class.__mro__[1:] if c.__name__ == "Client")
    return importlib.import_module(base.__module__.split(".")[0])


def pool_limits(sdk: ModuleType, keepalive: int) -> Any:
    """Limits for the SDK's HTTP client: no cap on connections (the threads cap them),
    ``keepalive`` idle ones kept."""
    return http_package(sdk).Limits(max_connections=None, max_keepalive_connections=keepalive)


class ThreadShards(Generic[Client]):
    """``threads`` threads spread round-robin over clients made by ``make(keepalive)``."""

    def __init__(self, make: Callable[[int], Client], *, threads: int) -> None:
        count = max(1, math.ceil(threads / THREADS_PER_POOL))
        per_pool = math.ceil(threads / count)
        self.clients = [make(per_pool) for _ in range(count)]
        self._turn = itertools.count()
        self._local = threading.local()

    def get(self) -> Client:
        """This thread's client."""
        client: Client | None = getattr(self._local, "client", None)
        if client is None:
            client = self.clients[next(self._turn) % len(self.clients)]
            self._local.client = client
        return client


def sdk_clients(
    sdk: ModuleType, client_class: Callable[..., Client], *, base_url: str, settings: Settings
) -> ThreadShards[Client]:
    """The worker's clients of one SDK (``openai`` or ``anthropic``, which take the same
    arguments): SDK retries off, ezq's connect and read timeouts, sized pools."""
    api_key = settings.require_api_key()

    def make(keepalive: int) -> Client:
        return client_class(
            api_key=api_key,
            base_url=base_url,
            # Celery's retry is the only retry, so that every attempt is counted and only
            # the right errors are retried.
            max_retries=0,
            timeout=sdk.Timeout(
                timeout=settings.ezq_gateway_read_timeout,
                connect=settings.ezq_gateway_connect_timeout,
            ),
            http_client=sdk.DefaultHttpxClient(limits=pool_limits(sdk, keepalive)),
        )

    return ThreadShards(make, threads=settings.ezq_worker_concurrency)

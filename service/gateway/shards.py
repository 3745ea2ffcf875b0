"""The gateway's HTTP connection pools: several per process, each for a share of its calls.

An SDK client's pool (httpcore's) scans every connection it holds each time a request
starts or ends, so one pool holding a thousand connections costs a thousand steps per
request (measured: 6.0 ms of CPU per call at 1,000 in flight against 2.4 ms with pools of
at most 64), and the SDKs' default keeps only 100 idle connections, so past 100
concurrent calls most calls would open a new TCP connection. The calls of a process are
therefore spread round-robin over several clients, each serving at most
``CALLS_PER_POOL`` of the process's concurrent calls and keeping a connection alive for
each of them.
"""

from __future__ import annotations

import importlib
import itertools
import math
from collections.abc import Callable
from types import ModuleType
from typing import Any, Generic, TypeVar

from service.config import Settings

Client = TypeVar("Client")

CALLS_PER_POOL = 64


def pool_limits(http_client_class: type[Any], keepalive: int) -> Any:
    """Limits for the SDK's HTTP client class: no cap on connections (the worker's
    concurrency caps them), ``keepalive`` idle ones kept. Built from the package that class
    comes from (httpx or httpx2, depending on the SDK's version)."""
    base = next(c for c in http_client_class.__mro__[1:] if c.__name__ in ("Client", "AsyncClient"))
    package = importlib.import_module(base.__module__.split(".")[0])
    return package.Limits(max_connections=None, max_keepalive_connections=keepalive)


class CallShards(Generic[Client]):
    """``calls`` concurrent calls spread round-robin over clients made by ``make(keepalive)``."""

    def __init__(self, make: Callable[[int], Client], *, calls: int) -> None:
        count = max(1, math.ceil(calls / CALLS_PER_POOL))
        per_pool = math.ceil(calls / count)
        self.clients = [make(per_pool) for _ in range(count)]
        self._turn = itertools.cycle(self.clients)

    def next(self) -> Client:
        """The client for the next call."""
        return next(self._turn)


def sdk_clients(
    sdk: ModuleType, client_class: Callable[..., Client], *, base_url: str, settings: Settings
) -> CallShards[Client]:
    """The worker's async clients of one SDK (``openai.AsyncOpenAI`` or
    ``anthropic.AsyncAnthropic``, which take the same arguments): SDK retries off, ezq's
    connect and read timeouts, sized pools."""
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
            http_client=sdk.DefaultAsyncHttpxClient(
                limits=pool_limits(sdk.DefaultAsyncHttpxClient, keepalive)
            ),
        )

    return CallShards(make, calls=settings.ezq_worker_concurrency)

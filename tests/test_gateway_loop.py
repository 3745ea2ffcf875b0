"""The gateway's event loop: calls from worker threads run on one loop thread."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from service.config import get_settings
from service.errors import GatewayConnectionError
from service.fake_gateway import Fault
from service.gateway import GatewayClient
from service.gateway.loop import LoopThread
from service.gateway.retry import is_retryable
from tests.test_faults import requests_for, wait_until

WHO = contextvars.ContextVar[str]("who")


def test_a_coroutine_sees_its_callers_context_and_runs_on_the_loop_thread() -> None:
    """What a job's live-tokens attempt relies on: the caller's context variables."""
    loop = LoopThread()

    async def report() -> tuple[str, str]:
        await asyncio.sleep(0)
        return WHO.get(), threading.current_thread().name

    def call(name: str) -> tuple[str, str]:
        WHO.set(name)
        return loop.run(report())

    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(call, [f"thread-{i}" for i in range(8)]))
    finally:
        loop.close()
    assert [who for who, _ in results] == [f"thread-{i}" for i in range(8)]
    assert {thread for _, thread in results} == {"ezq-gateway-loop"}


def test_an_exception_reaches_the_caller() -> None:
    loop = LoopThread()

    async def fail() -> None:
        raise ValueError("from the loop")

    try:
        with pytest.raises(ValueError, match="from the loop"):
            loop.run(fail())
    finally:
        loop.close()


def test_a_call_cut_short_by_shutdown_is_a_retryable_connection_error(
    service_env: dict[str, str], fake_gateway: Any
) -> None:
    """Closing the client while a call runs ends that call with an error that is retried,
    not with a hang or a failed job."""
    client = GatewayClient(get_settings())
    marker = uuid.uuid4().hex
    fake_gateway.add_faults(Fault(kind="normal", match=marker, latency=30, times=1))
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            client.complete("claude-sonnet-4-6", [{"role": "user", "content": marker}], {})
        except BaseException as error:  # what the worker thread would get
            outcome.append(error)

    caller = threading.Thread(target=call)
    caller.start()
    wait_until(lambda: requests_for(fake_gateway, marker) == 1, "call under way")
    client.close()
    caller.join(timeout=10)
    assert not caller.is_alive()
    (error,) = outcome
    assert isinstance(error, GatewayConnectionError)
    assert is_retryable(error)

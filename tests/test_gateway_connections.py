"""The gateway client keeps its connections: calls after the first reuse one."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from service.config import get_settings
from service.fake_gateway import Fault
from service.gateway import GatewayClient

MESSAGES = [{"role": "user", "content": "again"}]


@pytest.mark.parametrize("surface", ["openai", "anthropic"])
def test_sequential_calls_share_one_connection(
    service_env: dict[str, str], fake_gateway: Any, surface: str
) -> None:
    """Three calls one after the other open one TCP connection, not three: each stream is
    read to the end of its body, so its connection goes back to the pool."""
    client = GatewayClient(get_settings())
    try:
        before = fake_gateway.connections_accepted
        for _ in range(3):
            completion = client.complete("claude-sonnet-4-6", MESSAGES, {}, surface)
            assert completion.content
        assert fake_gateway.connections_accepted - before == 1
    finally:
        client.close()


@pytest.mark.parametrize("surface", ["openai", "anthropic"])
def test_every_worker_thread_keeps_its_connection(
    service_env: dict[str, str],
    fake_gateway: Any,
    surface: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With 150 worker threads calling at once, a second round of calls opens no new
    connection: each thread keeps one alive (the SDKs' default pool keeps only 100), and
    the threads are spread over several pools."""
    threads = 150
    monkeypatch.setenv("EZQ_WORKER_CONCURRENCY", str(threads))
    # 150 calls and the fake's 150 handlers share this process's GIL: on a loaded machine
    # a stream can fall silent for longer than the suite's 1.5 s read timeout. What is
    # counted here is connections, so the timeouts are the production defaults.
    monkeypatch.setenv("EZQ_GATEWAY_READ_TIMEOUT", "60")
    monkeypatch.setenv("EZQ_GATEWAY_ATTEMPT_DEADLINE", "600")
    get_settings.cache_clear()
    client = GatewayClient(get_settings())
    marker = f"threads-{surface}"
    fake_gateway.add_faults(Fault(kind="normal", match=marker, latency=0.5, times=2 * threads))
    messages = [{"role": "user", "content": marker}]
    start = threading.Barrier(threads)

    def call(_: int) -> str:
        start.wait()  # all in flight together
        return client.complete("claude-sonnet-4-6", messages, {}, surface).content or ""

    try:
        with ThreadPoolExecutor(threads) as pool:
            first = fake_gateway.connections_accepted
            assert all(list(pool.map(call, range(threads))))
            opened = fake_gateway.connections_accepted - first
            assert all(list(pool.map(call, range(threads))))
            again = fake_gateway.connections_accepted - first - opened
        assert opened == threads
        assert again == 0
    finally:
        client.close()
        monkeypatch.undo()
        get_settings.cache_clear()

"""The gateway client keeps its connections: calls after the first reuse one."""

from __future__ import annotations

from typing import Any

import pytest

from service.config import get_settings
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

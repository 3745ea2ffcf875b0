"""Talking to ezrouter: the only package that knows about the openai and anthropic SDKs.

``GatewayClient`` is imported lazily, so that the pure parts (``routing``, the wire
translation) are usable at enqueue without loading either SDK.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.gateway.client import GatewayClient

__all__ = ["GatewayClient"]


def __getattr__(name: str) -> Any:
    if name == "GatewayClient":
        from service.gateway.client import GatewayClient

        return GatewayClient
    raise AttributeError(name)

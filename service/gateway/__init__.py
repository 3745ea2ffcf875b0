"""Talking to ezrouter: the only package that knows about the openai SDK."""

from service.gateway.client import GatewayClient

__all__ = ["GatewayClient"]

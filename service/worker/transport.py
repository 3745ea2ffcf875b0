"""The Redis transport, made safe against messages that are not kombu envelopes.

kombu decodes every item it pops from a queue as JSON and builds a message from it inside
the worker's event loop; anything else (not JSON, a JSON array or string, a body that is
not base64, an envelope without properties) raises there and ends the worker. Here such
an item is kept aside as a dead letter instead, and the worker goes on.
"""

# kombu carries no type information.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from kombu.transport import redis

from service.worker.deadletter import set_aside


def envelope_problem(payload: Any) -> str | None:
    """Why ``payload`` cannot be a kombu envelope, or None when it can."""
    if not isinstance(payload, dict):
        return f"the message is a JSON {type(payload).__name__}, not an object"
    properties = payload.get("properties")
    if not isinstance(properties, dict):
        return "the envelope has no 'properties' object"
    if "delivery_tag" not in properties:
        return "the envelope's properties have no 'delivery_tag'"
    if not isinstance(properties.get("delivery_info", {}), dict):
        return "the envelope's 'delivery_info' is not an object"
    if not isinstance(payload.get("headers", {}), dict | None):
        return "the envelope's 'headers' is not an object"
    body = payload.get("body")
    if body and not isinstance(body, str):
        return "the envelope's 'body' is not a string"
    if body and properties.get("body_encoding") == "base64":
        try:
            base64.b64decode(body.encode(), validate=True)
        except (binascii.Error, ValueError):
            return "the body is not valid base64"
    return None


class Channel(redis.Channel):
    # The client kombu's commands go through outside the event loop (publishes, acks, the
    # unacked bookkeeping), kept for as long as the channel's connection pool lives.
    _commands_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        """kombu builds a new Redis client for every command it sends outside the event
        loop: 4 to 5 per job (the unacked bookkeeping, the ack, each task event), and
        building one (its table of response callbacks) cost about 5 % of a worker's CPU
        (``py-spy``, 0 ms gateway latency). A client holds no connection of its own and
        may be shared between threads (it takes one from the pool per command), so one
        is kept per pool; kombu makes a new pool after a disconnect, and so a new client.
        """
        if asynchronous:
            return super()._create_client(asynchronous=True)
        pool = self.pool
        client = self._commands_client
        if client is None or client.connection_pool is not pool:
            client = super()._create_client()
            self._commands_client = client
        return client

    def _brpop_read(self, **options: Any) -> Any:
        try:
            return super()._brpop_read(**options)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError: not JSON text
            set_aside(_raw_of(exc), f"not a JSON message: {type(exc).__name__}", kind="not_json")
            return True

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        try:
            return super()._get(queue)
        except ValueError as exc:
            set_aside(
                _raw_of(exc),
                f"not a JSON message: {type(exc).__name__}",
                kind="not_json",
                queue=queue,
            )
            raise self.Empty() from None  # type: ignore[attr-defined]


class Transport(redis.Transport):
    Channel = Channel

    def _deliver(self, message: Any, queue: str) -> None:
        problem = envelope_problem(message)
        if problem is not None:
            # Decoded already: kept as JSON again (the same text up to spacing).
            set_aside(
                json.dumps(message, default=repr).encode(),
                problem,
                kind="bad_envelope",
                queue=queue,
            )
            return
        super()._deliver(message, queue)


def _raw_of(exc: ValueError) -> Any:
    # json keeps the text it failed on; a UnicodeDecodeError keeps the bytes.
    return getattr(exc, "doc", None) or getattr(exc, "object", None) or b""

"""ezrouter's Anthropic surface through the official ``anthropic`` SDK.

Same contract as the OpenAI surface: SDK retries off (Celery's retry is the only one),
the same connect and read timeouts and attempt deadline, the same retry predicate, and
the stream assembled from the raw event lines (``AnthropicAssembler``) rather than the
SDK's typed events, which cost more per event (``make bench``). The request arrives in
OpenAI shape and is translated here (``anthropic_wire``); the reply leaves in it.
"""

from __future__ import annotations

import inspect
from typing import Any

import anthropic
from anthropic.resources.messages import Messages

from service.completion import Completion
from service.config import Settings
from service.gateway.anthropic_stream import AnthropicAssembler
from service.gateway.anthropic_wire import to_anthropic
from service.gateway.reading import http_response_of, stream_call
from service.gateway.shards import sdk_clients

# What this SDK version's create() takes by name; other body fields (temperature and top_p
# are not named by every version) travel through ``extra_body``, unchanged.
_SDK_PARAMS = frozenset(inspect.signature(Messages.create).parameters) - {"self", "extra_body"}


class AnthropicSurface:
    """Runs one Messages call per completion on the Anthropic surface, as a stream."""

    def __init__(self, settings: Settings) -> None:
        self._deadline_s = settings.ezq_gateway_attempt_deadline
        self.base_url = settings.anthropic_base_url
        self._clients = sdk_clients(
            anthropic, anthropic.Anthropic, base_url=self.base_url, settings=settings
        )

    def close(self) -> None:
        for client in self._clients.clients:
            client.close()

    def complete(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> Completion:
        """One attempt: a finished completion, or a GatewayError saying why not."""
        body = to_anthropic(model, messages, params)
        named = {k: v for k, v in body.items() if k in _SDK_PARAMS}
        extra_body = {k: v for k, v in body.items() if k not in _SDK_PARAMS} or None
        return stream_call(
            lambda: http_response_of(
                self._clients.get().messages.with_streaming_response.create(
                    stream=True, extra_body=extra_body, **named
                )
            ),
            AnthropicAssembler(),
            deadline_s=self._deadline_s,
        )

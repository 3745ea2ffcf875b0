"""ezrouter's OpenAI surface: one openai.OpenAI per process, raw SSE assembled by us.

ezrouter always answers with SSE, and the SDK's non-stream call then returns a raw
``str``; so every call asks for a stream. The SDK is kept for transport, auth and its
typed HTTP errors; the request body is built here from the stored (validated) request and
posted as it is, and frames are parsed by ``StreamAssembler``, which is several times
cheaper per chunk than building the SDK's typed chunk objects (see ``make bench``).
"""

from __future__ import annotations

from typing import Any

import openai

from service.completion import Completion
from service.config import Settings
from service.gateway.reading import post_streamed, stream_call
from service.gateway.shards import http_package, sdk_clients
from service.gateway.stream import StreamAssembler


def openai_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages as the OpenAI surface takes them: thinking blocks (an Anthropic-surface
    reply's) have no place there and are left out; everything else goes as sent."""
    return [
        {k: v for k, v in m.items() if k != "thinking_blocks"} if "thinking_blocks" in m else m
        for m in messages
    ]


class OpenAISurface:
    """Runs one chat completion per call on ``EZROUTER_BASE_URL``, as a stream."""

    def __init__(self, settings: Settings) -> None:
        self._deadline_s = settings.ezq_gateway_attempt_deadline
        self._clients = sdk_clients(
            openai, openai.OpenAI, base_url=settings.ezrouter_base_url, settings=settings
        )
        self._response_type = http_package(openai).Response

    def close(self) -> None:
        for client in self._clients.clients:
            client.close()

    def complete(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> Completion:
        """One attempt: a finished completion, or a GatewayError saying why not."""
        # ``params`` holds only fields validation knows (``CompletionParams``), none of
        # them the four set here.
        body = {
            **params,
            "model": model,
            "messages": openai_messages(messages),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        return stream_call(
            lambda: post_streamed(
                self._clients.get(), "/chat/completions", body, self._response_type
            ),
            StreamAssembler(),
            deadline_s=self._deadline_s,
        )

"""ezrouter's OpenAI surface: one openai.OpenAI per process, raw SSE assembled by us.

ezrouter always answers with SSE, and the SDK's non-stream call then returns a raw
``str``; so every call asks for a stream. The SDK is kept for transport, auth and its
typed HTTP errors; frames are parsed by ``StreamAssembler``, which is several times
cheaper per chunk than building the SDK's typed chunk objects (see ``make bench``).
"""

from __future__ import annotations

from typing import Any

import openai

from service.completion import Completion
from service.config import Settings
from service.gateway.reading import stream_call
from service.gateway.shards import sdk_clients
from service.gateway.stream import StreamAssembler

# Parameters the SDK's create() takes by name; the rest are ezrouter extensions that
# travel in the request body through ``extra_body``.
_SDK_PARAMS = frozenset(
    {
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "reasoning_effort",
        "user",
        "logit_bias",
        "logprobs",
        "top_logprobs",
    }
)


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

    def close(self) -> None:
        for client in self._clients.clients:
            client.close()

    def complete(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> Completion:
        """One attempt: a finished completion, or a GatewayError saying why not."""
        sdk_params = {k: v for k, v in params.items() if k in _SDK_PARAMS}
        extra_body = {k: v for k, v in params.items() if k not in _SDK_PARAMS} or None
        return stream_call(
            lambda: self._clients.get().chat.completions.with_streaming_response.create(  # type: ignore[call-overload]
                model=model,
                messages=openai_messages(messages),
                stream=True,
                stream_options={"include_usage": True},
                extra_body=extra_body,
                **sdk_params,
            ),
            StreamAssembler(),
            deadline_s=self._deadline_s,
        )

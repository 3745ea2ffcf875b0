"""A fake ezrouter: a real HTTP server that reproduces the gateway's documented quirks.

It always answers chat completions with SSE (even without ``stream``), uses
``msg_01…`` chunk ids, new-api style usage and error envelopes, sends
``x-oneapi-request-id`` on every response and never rate-limit headers.

The "model" calls a tool when tools are offered (and ``tool_choice`` is not ``"none"``)
and the conversation ends with a user turn. On the OpenAI surface it then reproduces
GW-001 as ezrouter's probe found it: ``claude-sonnet-4-6``, ``claude-haiku-4-5``,
``deepseek-v4-*`` and ``glm-5.1`` finish with ``"tool_calls"`` and send no tool call,
``kimi-k2.6`` answers in text, the others stream a real tool call. GW-005:
``claude-opus-4-7`` never reports cached tokens on the OpenAI surface.

``POST /anthropic/v1/messages`` is the Anthropic surface (see ``anthropic.py``): the key as
``x-api-key`` or Bearer, Anthropic's SSE events, the same error envelope, request-id
header and faults (``after_chunks`` then counts content events).

Fault kinds (queue them with ``FakeGateway.add_faults`` or ``POST /_fake/faults``):

``normal``
    A normal reply; useful with ``latency``, ``chunk_delay`` or ``reply``.
``status``
    An error envelope with ``status`` (the default kind when ``status`` is set).
``drop``
    Read the request, then reset the connection without any response.
``drop_mid_stream``
    200, ``after_chunks`` content chunks, then a connection reset.
``truncate``
    200, ``after_chunks`` content chunks, then a clean end of the body
    without ``finish_reason``, usage or ``[DONE]``.
``no_finish``
    Full content and ``[DONE]`` but no ``finish_reason`` and no usage.
``error_frame``
    200, ``after_chunks`` content chunks, an in-stream ``{"error": …}`` frame, clean end.
``malformed``
    200, ``after_chunks`` content chunks, a frame of broken JSON, then ``[DONE]``.
``non_sse``
    200 ``application/json`` ``{"ok": true}``.
``empty``
    200 ``text/event-stream`` with an empty body.
``tool_calls``
    Streamed ``delta.tool_calls`` fragments and ``finish_reason: "tool_calls"``
    (``reply`` overrides the arguments JSON).
``tool_calls_broken``
    GW-001: ``finish_reason: "tool_calls"`` without any ``tool_calls`` delta.
``empty_content``
    JSON-mode divergence: ``content`` "" with ``finish_reason: "stop"`` and usage.
``usage_on_finish``
    Usage rides on the finish chunk for this request whatever the instance setting.

Any kind that answers in full takes ``usage``: fields laid over the usage object the
reply reports (OpenAI surface), e.g. a count past what a ``token_usage`` column holds.

For the mid-stream kinds ``after_chunks`` counts content chunks; when it is
positive the role-only opening chunk precedes them, when it is 0 nothing but
the status line and headers is sent before the fault.
"""

from service.fake_gateway.faults import FAULT_KINDS, Fault
from service.fake_gateway.replies import DEFAULT_MODELS, ModelInfo, count_tokens
from service.fake_gateway.server import FakeGateway, ReceivedRequest, serve

__all__ = [
    "DEFAULT_MODELS",
    "FAULT_KINDS",
    "FakeGateway",
    "Fault",
    "ModelInfo",
    "ReceivedRequest",
    "count_tokens",
    "serve",
]

"""The ezrouter client: one openai.OpenAI per process, raw SSE assembled by us.

ezrouter always answers with SSE, and the SDK's non-stream call then returns a raw
``str``; so every call asks for a stream. The SDK is kept for transport, auth and its
typed HTTP errors; frames are parsed by ``StreamAssembler``, which is several times
cheaper per chunk than building the SDK's typed chunk objects (see ``make bench``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import openai

from service.completion import Completion
from service.config import Settings
from service.errors import (
    BrokenStream,
    GatewayConnectionError,
    GatewayError,
    GatewayServerError,
    GatewayTimeout,
    PermanentGatewayError,
)
from service.gateway.checks import check_reply
from service.gateway.stream import StreamAssembler, split_lines

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-oneapi-request-id"

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


def _transport_errors() -> tuple[type[BaseException], ...]:
    # While a stream is read the SDK no longer wraps transport failures; depending on the
    # SDK version they come from httpx or httpx2.
    found: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        found.append(module.TransportError)
    return tuple(found)


def _timeout_errors() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        found.append(module.TimeoutException)
    return tuple(found)


_TRANSPORT_ERRORS = _transport_errors()
_TIMEOUT_ERRORS = _timeout_errors()


def _message_of(body: Any, fallback: str) -> str:
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return fallback


def translate(error: Exception, *, request_id: str | None = None) -> GatewayError:
    """Our error for an SDK or transport exception; anything else is re-raised."""
    if isinstance(error, GatewayError):
        return error
    if isinstance(error, openai.APITimeoutError):
        return GatewayTimeout("gateway timed out", request_id=request_id)
    if isinstance(error, openai.APIConnectionError):
        cause = error.__cause__ or error
        return GatewayConnectionError(
            f"connection to the gateway failed: {type(cause).__name__}: {cause}",
            request_id=request_id,
        )
    if isinstance(error, openai.APIStatusError):
        rid = error.response.headers.get(REQUEST_ID_HEADER) or request_id
        message = _message_of(error.body, error.message)
        cls = GatewayServerError if error.status_code >= 500 else PermanentGatewayError
        return cls(message, status=error.status_code, request_id=rid, body=error.body)
    if isinstance(error, openai.APIError):
        return GatewayServerError(
            f"error inside the stream: {error.message}", request_id=request_id, body=error.body
        )
    if isinstance(error, _TIMEOUT_ERRORS):
        return GatewayTimeout(
            f"gateway stream stalled: {type(error).__name__}", request_id=request_id
        )
    if isinstance(error, _TRANSPORT_ERRORS):
        return BrokenStream(
            f"connection lost mid-stream: {type(error).__name__}: {error}", request_id=request_id
        )
    raise error


class GatewayClient:
    """Runs one chat completion per call against ezrouter, as a stream."""

    def __init__(self, settings: Settings) -> None:
        self._deadline_s = settings.ezq_gateway_attempt_deadline
        self._client = openai.OpenAI(
            api_key=settings.require_api_key(),
            base_url=settings.ezrouter_base_url,
            # Celery's retry is the only retry, so that every attempt is counted and only
            # the right errors are retried.
            max_retries=0,
            timeout=openai.Timeout(
                timeout=settings.ezq_gateway_read_timeout,
                connect=settings.ezq_gateway_connect_timeout,
            ),
        )

    def close(self) -> None:
        self._client.close()

    def complete(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> Completion:
        """One attempt: a finished completion, or a GatewayError saying why not."""
        sdk_params = {k: v for k, v in params.items() if k in _SDK_PARAMS}
        extra_body = {k: v for k, v in params.items() if k not in _SDK_PARAMS} or None
        deadline = time.monotonic() + self._deadline_s
        request_id: str | None = None
        try:
            with self._client.chat.completions.with_streaming_response.create(  # type: ignore[call-overload]
                model=model,
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
                extra_body=extra_body,
                **sdk_params,
            ) as response:
                request_id = response.headers.get(REQUEST_ID_HEADER)
                content_type = response.headers.get("content-type", "")
                if "text/event-stream" not in content_type:
                    shown = content_type or "no content-type"
                    raise BrokenStream(
                        f"HTTP {response.status_code} with a non-SSE body ({shown})",
                        status=response.status_code,
                        request_id=request_id,
                    )
                assembler = StreamAssembler()
                for line in split_lines(response.http_response.iter_bytes()):
                    assembler.feed(line)
                    if assembler.done:
                        break
                    if time.monotonic() > deadline:
                        raise GatewayTimeout(
                            f"attempt passed its {self._deadline_s:g}s deadline while streaming",
                            request_id=request_id,
                        )
                completion = assembler.result(request_id=request_id)
        except Exception as error:
            translated = translate(error, request_id=request_id)
            if translated.request_id is None:
                translated.request_id = request_id
            raise translated from error
        check_reply(completion, params)
        return completion

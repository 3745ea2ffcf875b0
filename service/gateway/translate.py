"""Our error for an SDK or transport exception, for both surfaces' SDKs.

The openai and anthropic SDKs share one design (their classes have the same names and
meanings), so one translation serves both: timeouts and connection failures are
retryable, a status error is retryable at 5xx only, a plain ``APIError`` is an error
frame inside a started stream.
"""

from __future__ import annotations

import re
from typing import Any

import anthropic
import openai

from service.errors import (
    BrokenStream,
    GatewayConnectionError,
    GatewayError,
    GatewayServerError,
    GatewayTimeout,
    PermanentGatewayError,
)

REQUEST_ID_HEADER = "x-oneapi-request-id"

SDK_TIMEOUTS = (openai.APITimeoutError, anthropic.APITimeoutError)
SDK_CONNECTION_ERRORS = (openai.APIConnectionError, anthropic.APIConnectionError)
SDK_STATUS_ERRORS = (openai.APIStatusError, anthropic.APIStatusError)
SDK_ERRORS = (openai.APIError, anthropic.APIError)
# Exactly these classes (not subclasses) are what the SDKs raise for an error frame.
SDK_STREAM_ERRORS = (openai.APIError, anthropic.APIError)


def _transport_errors(attribute: str) -> tuple[type[BaseException], ...]:
    # While a stream is read the SDKs no longer wrap transport failures; depending on the
    # SDK version they come from httpx or httpx2.
    found: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        found.append(getattr(module, attribute))
    return tuple(found)


TRANSPORT_ERRORS = _transport_errors("TransportError")
TIMEOUT_ERRORS = _transport_errors("TimeoutException")


def _message_of(body: Any, fallback: str) -> str:
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return fallback


# A bytes literal in an exception's text: h11 quotes what it read ("illegal chunk header:
# b'...'"), and past a wrong chunk size what it read is the body, the reply.
_BYTES_REPR = re.compile(r"""\bb'(?:[^'\\]|\\.)*'?|\bb"(?:[^"\\]|\\.)*"?""")


def _without_bytes(text: str) -> str:
    """``text`` with each quoted bytes value left out: it may be reply text."""
    return _BYTES_REPR.sub("<bytes not shown>", text)


def translate(error: Exception, *, request_id: str | None = None) -> GatewayError:
    """Our error for an SDK or transport exception; anything else is re-raised."""
    if isinstance(error, GatewayError):
        return error
    if isinstance(error, SDK_TIMEOUTS):
        return GatewayTimeout("gateway timed out", request_id=request_id)
    if isinstance(error, SDK_CONNECTION_ERRORS):
        cause = error.__cause__ or error
        return GatewayConnectionError(
            f"connection to the gateway failed: {type(cause).__name__}: {cause}",
            request_id=request_id,
        )
    if isinstance(error, SDK_STATUS_ERRORS):
        rid = error.response.headers.get(REQUEST_ID_HEADER) or request_id
        message = _message_of(error.body, error.message)
        cls = GatewayServerError if error.status_code >= 500 else PermanentGatewayError
        return cls(message, status=error.status_code, request_id=rid, body=error.body, quoted=True)
    if isinstance(error, SDK_ERRORS):
        return GatewayServerError(
            f"error inside the stream: {error.message}",
            request_id=request_id,
            body=error.body,
            quoted=True,
        )
    if isinstance(error, TIMEOUT_ERRORS):
        return GatewayTimeout(
            f"gateway stream stalled: {type(error).__name__}", request_id=request_id
        )
    if isinstance(error, TRANSPORT_ERRORS):
        return BrokenStream(
            f"connection lost mid-stream: {type(error).__name__}: {_without_bytes(str(error))}",
            request_id=request_id,
        )
    raise error

"""The one predicate that decides what is retried, and the backoff schedule."""

from __future__ import annotations

import random

import anthropic
import httpx2
import openai
import pytest

from service.errors import (
    BrokenStream,
    GatewayConnectionError,
    GatewayServerError,
    GatewayTimeout,
    PermanentGatewayError,
)
from service.gateway.client import translate
from service.gateway.retry import backoff_seconds, is_retryable

REQUEST = httpx2.Request("POST", "https://www.ezrouter.dev/v1/chat/completions")


def status_error(status: int) -> openai.APIStatusError:
    response = httpx2.Response(
        status, request=REQUEST, headers={"x-oneapi-request-id": "rid-1"}, json={}
    )
    body = {"error": {"code": "", "message": "boom (request id: rid-1)", "type": "upstream_error"}}
    client = openai.OpenAI(api_key="sk-unused", base_url="http://127.0.0.1:9/v1")
    return client._make_status_error(f"Error code: {status}", body=body, response=response)


def anthropic_status_error(status: int) -> anthropic.APIStatusError:
    response = httpx2.Response(
        status, request=REQUEST, headers={"x-oneapi-request-id": "rid-2"}, json={}
    )
    body = {"error": {"code": "", "message": "boom (request id: rid-2)", "type": "new_api_error"}}
    client = anthropic.Anthropic(api_key="sk-unused", base_url="http://127.0.0.1:9/anthropic")
    return client._make_status_error(f"Error code: {status}", body=body, response=response)


# The Anthropic surface's SDK: the same rule, connection errors and 5xx only.
ANTHROPIC_CASES = [
    (anthropic.APIConnectionError(request=REQUEST), True),
    (anthropic.APITimeoutError(request=REQUEST), True),
    (anthropic.APIError("error event mid-stream", request=REQUEST, body=None), True),
    *[(anthropic_status_error(s), True) for s in (500, 502, 503, 529)],
    *[(anthropic_status_error(s), False) for s in (400, 401, 403, 404, 413, 429)],
]

CASES = [
    (openai.APIConnectionError(request=REQUEST), True),
    (openai.APITimeoutError(request=REQUEST), True),
    (openai.APIError("error frame mid-stream", request=REQUEST, body=None), True),
    *[(status_error(s), True) for s in (500, 502, 503, 504, 529)],
    *[(status_error(s), False) for s in (400, 401, 403, 404, 409, 413, 422, 429)],
    (GatewayConnectionError("reset"), True),
    (GatewayTimeout("slow"), True),
    (BrokenStream("no [DONE]"), True),
    (GatewayServerError("503", status=503), True),
    (PermanentGatewayError("nope", status=400), False),
    (ValueError("a bug"), False),
    (KeyError("a bug"), False),
]


@pytest.mark.parametrize(
    ("error", "retryable"), CASES + ANTHROPIC_CASES, ids=lambda v: repr(v)[:40]
)
def test_is_retryable(error: BaseException, retryable: bool) -> None:
    """Connection errors, timeouts, broken streams and 5xx are retried; nothing else is."""
    assert is_retryable(error) is retryable


@pytest.mark.parametrize(
    ("error", "retryable"), CASES[:15] + ANTHROPIC_CASES, ids=lambda v: repr(v)[:40]
)
def test_translate_keeps_the_verdict(error: Exception, retryable: bool) -> None:
    """Translating an SDK exception into our tree keeps the retry decision."""
    translated = translate(error)
    assert translated.retryable is retryable
    assert is_retryable(translated) is retryable


def test_translate_keeps_status_message_and_request_id() -> None:
    """A status error keeps the HTTP status, the gateway's message and its request id."""
    translated = translate(status_error(429))
    assert isinstance(translated, PermanentGatewayError)
    assert translated.status == 429
    assert translated.message == "boom (request id: rid-1)"
    assert translated.request_id == "rid-1"


def test_translate_keeps_the_anthropic_status_and_request_id() -> None:
    """An Anthropic-surface status error keeps its status, message and request id."""
    translated = translate(anthropic_status_error(403))
    assert isinstance(translated, PermanentGatewayError)
    assert (translated.status, translated.request_id) == (403, "rid-2")
    assert translated.message == "boom (request id: rid-2)"


def test_translate_mid_stream_transport_errors() -> None:
    """A transport error while reading the stream is a broken stream; a read timeout a timeout."""
    assert isinstance(translate(httpx2.RemoteProtocolError("peer closed")), BrokenStream)
    assert isinstance(translate(httpx2.ReadTimeout("stalled")), GatewayTimeout)


def test_translate_reraises_bugs() -> None:
    """Exceptions that are not about the gateway are not disguised as gateway errors."""
    with pytest.raises(ZeroDivisionError):
        translate(ZeroDivisionError())


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    """Each wait lies in [ceiling/2, ceiling] with ceiling = base * 2**(n-1), capped."""
    rng = random.Random(7)
    for attempt, ceiling in [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (10, 60.0)]:
        waits = [backoff_seconds(attempt, base=2.0, cap=60.0, rng=rng) for _ in range(200)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits)
        assert max(waits) - min(waits) > ceiling / 4, "jitter spreads the retries"

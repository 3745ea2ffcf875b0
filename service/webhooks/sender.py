"""One HTTP attempt: POST the signed event, read a little of the answer, say what happened.

This is the boundary with httpx: its exceptions become an ``AttemptResult`` here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import httpx

from service.errors import WebhookTargetRefused
from service.webhooks.retry import AttemptResult, parse_retry_after
from service.webhooks.ssrf import AddressPolicy
from service.webhooks.transport import PinnedTransport, Resolver, resolve_host

USER_AGENT = "ezq-webhooks/1"


def _excerpt(raw: bytes) -> str:
    return " ".join(raw.decode("utf-8", errors="replace").split())


def _read_capped(response: httpx.Response, limit: int) -> bytes:
    # Raw bytes, not decoded ones: a small compressed body must not inflate in memory.
    data = bytearray()
    if limit > 0:
        for chunk in response.iter_raw():
            data += chunk
            if len(data) >= limit:
                break
    return bytes(data[:limit])


def _unbind(response: httpx.Response) -> None:
    """Drop a closed response's stream.

    httpx binds a sent response's stream to the response (each refers to the other), so a
    response and everything it holds (here the attempt's whole connection pool, about 70
    objects) outlive the attempt until the cyclic garbage collector finds them: in a
    worker, whose collector runs after 50,000 such objects (``EZQ_WORKER_GC_THRESHOLDS``),
    about every 13 s at 206 jobs/s with a quarter of them delivering a webhook, and each time
    that run held every thread for 15-57 ms. Without the cycle they are freed at once.
    """
    response.stream = httpx.ByteStream(b"")


def _describe(response: httpx.Response, body: bytes) -> str:
    text = f"HTTP {response.status_code}"
    if response.is_redirect:
        location = response.headers.get("location", "")
        text += f" (redirects are not followed; location {location!r})"
    excerpt = _excerpt(body)
    return f"{text}: {excerpt}" if excerpt else text


def post_event(
    url: str,
    body: str,
    headers: Mapping[str, str],
    *,
    policy: AddressPolicy,
    timeout: float,
    max_response_bytes: int,
    resolve: Resolver = resolve_host,
) -> AttemptResult:
    """POST ``body`` to ``url`` once, never following redirects, within ``timeout`` seconds."""
    started = time.monotonic()

    def elapsed_ms() -> int:
        return int((time.monotonic() - started) * 1000)

    request_headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "accept-encoding": "identity",
        **headers,
    }
    transport = PinnedTransport(policy, timeout=timeout, resolve=resolve)
    response: httpx.Response | None = None
    try:
        with (
            httpx.Client(
                transport=transport, timeout=timeout, follow_redirects=False, trust_env=False
            ) as client,
            client.stream(
                "POST", url, content=body.encode("utf-8"), headers=request_headers
            ) as response,
        ):
            answer = _read_capped(response, max_response_bytes)
    except WebhookTargetRefused as exc:
        return AttemptResult(None, str(exc), elapsed_ms(), refused=True)
    except httpx.InvalidURL as exc:
        return AttemptResult(None, f"unusable URL: {exc}", elapsed_ms(), refused=True)
    except httpx.TimeoutException as exc:
        return AttemptResult(None, f"timeout: {exc or type(exc).__name__}", elapsed_ms())
    except httpx.HTTPError as exc:
        return AttemptResult(None, f"{type(exc).__name__}: {exc}", elapsed_ms())
    finally:
        if response is not None:
            _unbind(response)
    if response.is_success:
        return AttemptResult(response.status_code, None, elapsed_ms())
    return AttemptResult(
        response.status_code,
        _describe(response, answer),
        elapsed_ms(),
        retry_after=parse_retry_after(response.headers.get("retry-after")),
    )

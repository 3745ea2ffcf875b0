"""One HTTP attempt: POST the signed event, read a little of the answer, say what happened.

This is the boundary with httpx: its exceptions become an ``AttemptResult`` here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import httpx

from service.errors import WebhookTargetRefused
from service.webhooks.kept import kept_clients, new_client
from service.webhooks.retry import AttemptResult, parse_retry_after
from service.webhooks.ssrf import AddressPolicy
from service.webhooks.transport import PinnedTransport, Resolver, attempt_within, resolve_host

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


# What a request sent on a kept connection meets when the receiver closed that connection
# as it was being reused (the attempt's scope says whether any byte of an answer had come).
_CLOSED_UNDER_US = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


def _attempt(
    client: httpx.Client,
    url: str,
    content: bytes,
    headers: Mapping[str, str],
    *,
    timeout: float,
    max_response_bytes: int,
) -> tuple[httpx.Response, bytes]:
    response: httpx.Response | None = None
    try:
        with client.stream(
            "POST", url, content=content, headers=headers, timeout=timeout
        ) as response:
            return response, _read_capped(response, max_response_bytes)
    finally:
        if response is not None:
            _unbind(response)


def post_event(
    url: str,
    body: str,
    headers: Mapping[str, str],
    *,
    policy: AddressPolicy,
    timeout: float,
    max_response_bytes: int,
    resolve: Resolver = resolve_host,
    keepalive_s: float = 0.0,
) -> AttemptResult:
    """POST ``body`` to ``url`` once, never following redirects, within ``timeout`` seconds.

    With ``keepalive_s``, on a connection kept from an earlier attempt to the same scheme,
    host and port when one is idle, and the connection is kept for the next one (only
    with the system's resolver: a scripted one gets a connection of its own)."""
    started = time.monotonic()

    def elapsed_ms() -> int:
        return int((time.monotonic() - started) * 1000)

    request_headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "accept-encoding": "identity",
        **headers,
    }
    content = body.encode("utf-8")

    def send(client: httpx.Client) -> tuple[httpx.Response, bytes]:
        return _attempt(
            client,
            url,
            content,
            request_headers,
            timeout=timeout,
            max_response_bytes=max_response_bytes,
        )

    kept = keepalive_s > 0 and resolve is resolve_host
    try:
        with attempt_within(timeout) as scope:
            if kept:
                try:
                    response, answer = send(kept_clients.get(policy, keepalive_s))
                except _CLOSED_UNDER_US:
                    if scope.opened or scope.answered:
                        raise
                    # A kept connection the receiver had closed: not a byte came back; the
                    # request goes again, once, on a connection of its own (below).
                    kept = False
            if not kept:
                with new_client(PinnedTransport(policy, resolve=resolve)) as client:
                    response, answer = send(client)
    except WebhookTargetRefused as exc:
        return AttemptResult(None, str(exc), elapsed_ms(), refused=True)
    except httpx.InvalidURL as exc:
        return AttemptResult(None, f"unusable URL: {exc}", elapsed_ms(), refused=True)
    except httpx.TimeoutException as exc:
        return AttemptResult(None, f"timeout: {exc or type(exc).__name__}", elapsed_ms())
    except httpx.HTTPError as exc:
        return AttemptResult(None, f"{type(exc).__name__}: {exc}", elapsed_ms())
    if response.is_success:
        return AttemptResult(response.status_code, None, elapsed_ms())
    return AttemptResult(
        response.status_code,
        _describe(response, answer),
        elapsed_ms(),
        retry_after=parse_retry_after(response.headers.get("retry-after")),
    )

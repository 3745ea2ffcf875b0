"""Reading one SSE response into an assembler, the same way on both surfaces."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol

from service.completion import Completion
from service.errors import BrokenStream, GatewayTimeout
from service.gateway.stream import split_lines
from service.gateway.translate import REQUEST_ID_HEADER, translate
from service.live import publisher as live_publisher
from service.live.publisher import LiveAttempt


class Assembler(Protocol):
    done: bool
    live: LiveAttempt | None

    def feed(self, line: bytes) -> None: ...

    def result(self, *, request_id: str | None) -> Completion: ...


def _drain(lines: Iterator[bytes], deadline: float) -> None:
    """Read what follows the end of the stream (the body's chunked terminator), as the
    SDK's own stream does: a connection left half-read cannot go back to the pool, and a
    new one per call costs a TCP handshake and an address lookup, about a fifth of a job's
    CPU at 0 ms gateway latency. The reply is complete already, so a failure here only
    costs the connection."""
    with contextlib.suppress(Exception):
        for _ in lines:
            if time.monotonic() > deadline:
                return


def read_sse(
    response: Any,
    assembler: Assembler,
    *,
    request_id: str | None,
    deadline: float,
    deadline_s: float,
) -> Completion:
    """Feed the body's lines until the stream's end, within the attempt's deadline.

    ``response`` is the HTTP response of the SDK's client, its body not read yet; its raw
    bytes are read, never the SDK's typed events (see ``make bench``).
    """
    content_type = response.headers.get("content-type", "")
    if "text/event-stream" not in content_type:
        shown = content_type or "no content-type"
        raise BrokenStream(
            f"HTTP {response.status_code} with a non-SSE body ({shown})",
            status=response.status_code,
            request_id=request_id,
        )
    # Live tokens: the assembler hands each fragment to the running attempt, if any.
    assembler.live = live_publisher.current()
    lines = split_lines(response.iter_bytes())
    for line in lines:
        assembler.feed(line)
        if assembler.done:
            _drain(lines, deadline)
            break
        if time.monotonic() > deadline:
            raise GatewayTimeout(
                f"attempt passed its {deadline_s:g}s deadline while streaming",
                request_id=request_id,
            )
    return assembler.result(request_id=request_id)


@contextlib.contextmanager
def post_streamed(
    client: Any, path: str, body: dict[str, Any], response_type: type[Any]
) -> Iterator[Any]:
    """POST ``body`` as it is through an SDK client and give its HTTP response unread.

    The client's documented way to send a request it has no method for (``client.post``
    with ``cast_to`` the HTTP response type): its base URL, auth, timeouts, connection pool
    and typed HTTP errors, without its per-call walk of the request against the endpoint's
    parameter types, which grows with the conversation (``make bench``). The body is
    already JSON-ready: validated at enqueue, stored as JSON.
    """
    response = client.post(path, cast_to=response_type, body=body, stream=True)
    try:
        yield response
    finally:
        response.close()


@contextlib.contextmanager
def http_response_of(streaming: AbstractContextManager[Any]) -> Iterator[Any]:
    """The HTTP response inside an SDK's streaming response (``with_streaming_response``),
    its body unread."""
    with streaming as response:
        yield response.http_response


def stream_call(
    open_response: Callable[[], AbstractContextManager[Any]],
    assembler: Assembler,
    *,
    deadline_s: float,
) -> Completion:
    """One streamed call: open it (``open_response`` gives the HTTP response, its body
    unread), read it to its end, and translate whatever fails into our error tree, with the
    gateway's request id when it sent one.

    Once the gateway has answered, whatever fails after (a stream dropped, cut short,
    garbled or carrying an error frame, a deadline passed while reading) carries the HTTP
    status it answered with (200), as it carries the request id: the attempt records what
    the gateway said, then what went wrong."""
    deadline = time.monotonic() + deadline_s
    request_id: str | None = None
    status: int | None = None
    try:
        with open_response() as response:
            request_id = response.headers.get(REQUEST_ID_HEADER)
            status = response.status_code
            return read_sse(
                response, assembler, request_id=request_id, deadline=deadline, deadline_s=deadline_s
            )
    except Exception as error:
        translated = translate(error, request_id=request_id)
        if translated.request_id is None:
            translated.request_id = request_id
        if translated.status is None:
            translated.status = status
        raise translated from error

"""Assembling an ezrouter SSE stream into one completion.

This runs once per chunk, hundreds of times per job, so it works on raw frames with
``json.loads`` and plain dicts rather than the SDK's typed chunk objects.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from service.completion import Completion
from service.errors import BrokenStream, GatewayServerError
from service.live.publisher import LiveAttempt

_DATA = b"data:"
_DONE = b"[DONE]"


class StreamAssembler:
    """Feed it the stream's lines; ask for the completion once it reports ``done``."""

    __slots__ = (
        "_content",
        "_reasoning",
        "_tool_calls",
        "done",
        "finish_reason",
        "first_token_at",
        "frames",
        "live",
        "usage",
    )

    def __init__(self) -> None:
        self._content: list[str] = []
        self._reasoning: list[str] = []
        self._tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.done = False
        self.first_token_at: datetime | None = None
        self.frames = 0
        # Set by the reading loop when live tokens are on: it gets each fragment as read.
        self.live: LiveAttempt | None = None

    def feed(self, line: bytes) -> None:
        """Take one line of the body (without its newline)."""
        if not line.startswith(_DATA):
            # Blank separators, ':' keep-alive comments, event:/id:/retry: fields.
            return
        payload = line[5:].strip()
        if payload == _DONE:
            self.done = True
            return
        if self.done:
            raise BrokenStream("data after [DONE]")
        frame = decode_frame(payload)
        self.frames += 1
        error = frame.get("error")
        if error:
            raise error_frame(error)
        usage = frame.get("usage")
        if usage:
            if not isinstance(usage, dict):
                raise BrokenStream(f"usage is not an object: {payload[:200]!r}")
            self.usage = usage
        # A usage-only final chunk has "choices": []; never index blindly.
        choices = frame.get("choices")
        if choices:
            try:
                self._choice(choices[0])
            except (AttributeError, TypeError, KeyError, IndexError):
                raise BrokenStream(f"unexpected frame shape: {payload[:200]!r}") from None

    def _choice(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta")
        if delta:
            content = delta.get("content")
            if content:
                if self.first_token_at is None:
                    self.first_token_at = datetime.now(UTC)
                self._content.append(content)
                if self.live is not None:
                    self.live.content(content)
            reasoning = delta.get("reasoning_content")
            if reasoning:
                if self.first_token_at is None:
                    self.first_token_at = datetime.now(UTC)
                self._reasoning.append(reasoning)
                if self.live is not None:
                    self.live.reasoning(reasoning)
            tool_calls = delta.get("tool_calls")
            if tool_calls:
                if self.first_token_at is None:
                    self.first_token_at = datetime.now(UTC)
                self._merge_tool_calls(tool_calls)
                if self.live is not None:
                    for fragment in tool_calls:
                        self.live.tool_call(fragment)
        finish_reason = choice.get("finish_reason")
        if finish_reason:
            self.finish_reason = finish_reason

    def _merge_tool_calls(self, fragments: list[dict[str, Any]]) -> None:
        for fragment in fragments:
            index = fragment.get("index", len(self._tool_calls))
            call = self._tool_calls.setdefault(
                index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
            )
            if fragment.get("id"):
                call["id"] = fragment["id"]
            if fragment.get("type"):
                call["type"] = fragment["type"]
            function = fragment.get("function") or {}
            if function.get("name"):
                call["function"]["name"] += function["name"]
            if function.get("arguments"):
                call["function"]["arguments"] += function["arguments"]

    def result(self, *, request_id: str | None) -> Completion:
        """The completion, if the stream really ended; otherwise BrokenStream."""
        if not self.done:
            raise BrokenStream(
                f"stream ended without [DONE] after {self.frames} frames", request_id=request_id
            )
        if self.finish_reason is None:
            raise BrokenStream(
                f"stream ended without a finish_reason after {self.frames} frames",
                request_id=request_id,
            )
        tool_calls = [self._tool_calls[i] for i in sorted(self._tool_calls)] or None
        return Completion(
            content="".join(self._content) if self._content or not tool_calls else None,
            finish_reason=self.finish_reason,
            tool_calls=tool_calls,
            reasoning_content="".join(self._reasoning) or None,
            usage=self.usage,
            first_token_at=self.first_token_at,
            request_id=request_id,
        )


def decode_frame(payload: bytes) -> dict[str, Any]:
    """A ``data:`` payload as a JSON object, or BrokenStream."""
    try:
        frame = json.loads(payload)
    except ValueError:
        raise BrokenStream(f"malformed SSE frame: {payload[:200]!r}") from None
    if not isinstance(frame, dict):
        raise BrokenStream(f"SSE frame is not an object: {payload[:200]!r}")
    return frame


def error_frame(error: Any) -> GatewayServerError:
    # The stream had started, so the request was accepted: an error frame is the upstream
    # failing, which is treated like a 5xx.
    if isinstance(error, dict):
        message = str(error.get("message") or error)
        body: Any = error
    else:
        message, body = str(error), error
    return GatewayServerError(f"error inside the stream: {message}", body=body)


def split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Lines of a byte stream, without their ``\\n`` / ``\\r\\n`` endings."""
    pending = b""
    for chunk in chunks:
        if pending:
            chunk = pending + chunk
        lines = chunk.split(b"\n")
        pending = lines.pop()
        for line in lines:
            yield line[:-1] if line.endswith(b"\r") else line
    if pending:
        yield pending

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
        self.frames += 1
        frame = decode_frame(payload, self.frames)
        error = frame.get("error")
        if error:
            raise error_frame(error)
        usage = frame.get("usage")
        if usage:
            if not isinstance(usage, dict):
                raise BrokenStream(
                    f"frame {self.frames}: usage is {json_type(usage)}, not an object"
                )
            self.usage = usage
        # A usage-only final chunk has "choices": []; never index blindly.
        choices = frame.get("choices")
        if choices:
            try:
                self._choice(choices[0])
            except (AttributeError, TypeError, KeyError, IndexError):
                raise shape_error(self.frames, payload, _choices_problem(choices)) from None

    def _choice(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta")
        if delta:
            content = delta.get("content")
            if content:
                if not isinstance(content, str):
                    raise TypeError  # else "".join fails at the end, outside any check
                if self.first_token_at is None:
                    self.first_token_at = datetime.now(UTC)
                self._content.append(content)
                if self.live is not None:
                    self.live.content(content)
            reasoning = delta.get("reasoning_content")
            if reasoning:
                if not isinstance(reasoning, str):
                    raise TypeError
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


# What an error may say about a frame: its number, its size, where its JSON breaks, which
# field has which JSON type. Never its text: frames carry the reply (and, echoed, the
# prompt), and these messages reach the worker's log, job_attempts.error, the job's error
# and its webhook.


def json_type(value: Any) -> str:
    """The JSON type of a decoded value, with its article: "a string", "an array"..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def wrong_type(path: str, value: Any, expected: str) -> str:
    """``path`` is <what it is>, not ``expected``: a field named, its value not shown."""
    return f"{path} is {json_type(value)}, not {expected}"


def shape_error(number: int, payload: bytes, problem: str) -> BrokenStream:
    """A frame that is JSON but not the shape the assembler reads."""
    return BrokenStream(f"unexpected shape of SSE frame {number} ({len(payload)} bytes): {problem}")


def _json_problem(error: Exception) -> str:
    if isinstance(error, json.JSONDecodeError):
        # Its msg is the parser's fixed text ("Expecting ',' delimiter"); its doc, the frame,
        # is left out.
        return f"{error.msg} at character {error.pos}"
    if isinstance(error, UnicodeDecodeError):
        return f"not valid {error.encoding} ({error.reason} at byte {error.start})"
    if isinstance(error, RecursionError):
        return "nested too deeply"
    return type(error).__name__


def decode_frame(payload: bytes, number: int) -> dict[str, Any]:
    """A ``data:`` payload (the stream's ``number``-th) as a JSON object, or BrokenStream."""
    try:
        frame = json.loads(payload)
    except (ValueError, RecursionError) as error:
        raise BrokenStream(
            f"malformed SSE frame {number} ({len(payload)} bytes): {_json_problem(error)}"
        ) from None
    if not isinstance(frame, dict):
        raise BrokenStream(
            f"SSE frame {number} ({len(payload)} bytes) is {json_type(frame)}, not an object"
        )
    return frame


def _choices_problem(choices: Any) -> str:
    """Which field of a chunk's ``choices`` the assembler could not read, and its type.

    Only called once reading failed, so the common path pays nothing for it.
    """
    if not isinstance(choices, list):
        return wrong_type("choices", choices, "an array")
    choice = choices[0]
    if not isinstance(choice, dict):
        return wrong_type("choices[0]", choice, "an object")
    delta = choice.get("delta")
    if not delta:
        return "choices[0] has a field of an unexpected type"
    if not isinstance(delta, dict):
        return wrong_type("choices[0].delta", delta, "an object")
    for name in ("content", "reasoning_content"):
        value = delta.get(name)
        if value and not isinstance(value, str):
            return wrong_type(f"choices[0].delta.{name}", value, "a string")
    tool_calls = delta.get("tool_calls")
    if tool_calls and not isinstance(tool_calls, list):
        return wrong_type("choices[0].delta.tool_calls", tool_calls, "an array")
    for i, fragment in enumerate(tool_calls or []):
        path = f"choices[0].delta.tool_calls[{i}]"
        if not isinstance(fragment, dict):
            return wrong_type(path, fragment, "an object")
        index = fragment.get("index")
        if isinstance(index, list | dict):
            return wrong_type(f"{path}.index", index, "a number")
        function = fragment.get("function")
        if function and not isinstance(function, dict):
            return wrong_type(f"{path}.function", function, "an object")
        for name in ("name", "arguments"):
            value = (function or {}).get(name)
            if value and not isinstance(value, str):
                return wrong_type(f"{path}.function.{name}", value, "a string")
    return "choices[0] has a field of an unexpected type"


def error_frame(error: Any) -> GatewayServerError:
    # The stream had started, so the request was accepted: an error frame is the upstream
    # failing, which is treated like a 5xx.
    # The gateway's own message is kept, like a 4xx's; without one, the frame is not quoted.
    message = error.get("message") if isinstance(error, dict) else None
    if message and isinstance(message, str):
        return GatewayServerError(f"error inside the stream: {message}", body=error, quoted=True)
    if isinstance(error, dict):
        message = f"no message (error.message is {json_type(error.get('message'))})"
    else:
        message = f"no message (error is {json_type(error)})"
    return GatewayServerError(f"error inside the stream: {message}", body=error)


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

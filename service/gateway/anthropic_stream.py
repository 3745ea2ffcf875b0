"""Assembling an Anthropic Messages SSE stream into one OpenAI-shaped completion.

Works on the raw ``data:`` lines with ``json.loads`` and plain dicts, like the OpenAI
path: every Anthropic frame names its own ``type``, so the ``event:`` lines are not
needed. Text blocks become ``content``, ``tool_use`` blocks OpenAI ``tool_calls``,
thinking blocks ``reasoning_content`` plus ``thinking_blocks`` (signatures kept), the
stop reason a finish reason, and the usage object is kept as Anthropic sent it
(``message_start``'s, updated by ``message_delta``'s).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from service.completion import Completion
from service.errors import BrokenStream
from service.gateway.anthropic_wire import FINISH_REASONS
from service.gateway.stream import decode_frame, error_frame, shape_error, wrong_type
from service.live.publisher import LiveAttempt

_DATA = b"data:"


# The event types read, and the field each content delta type carries.
_EVENTS = frozenset(
    {"content_block_start", "content_block_delta", "message_start", "message_delta"}
)
_DELTA_FIELDS = {
    "text_delta": "text",
    "input_json_delta": "partial_json",
    "thinking_delta": "thinking",
    "signature_delta": "signature",
}


class AnthropicAssembler:
    """Feed it the stream's lines; ask for the completion once it reports ``done``."""

    __slots__ = ("_blocks", "done", "first_token_at", "frames", "live", "stop_reason", "usage")

    def __init__(self) -> None:
        self._blocks: dict[int, dict[str, Any]] = {}
        self.stop_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.done = False
        self.first_token_at: datetime | None = None
        self.frames = 0
        # Set by the reading loop when live tokens are on: it gets each fragment as read.
        self.live: LiveAttempt | None = None

    def feed(self, line: bytes) -> None:
        """Take one line of the body (without its newline)."""
        if not line.startswith(_DATA):
            return  # event: names, blank separators, comments
        payload = line[5:].strip()
        if self.done:
            raise BrokenStream("data after message_stop")
        self.frames += 1
        frame = decode_frame(payload, self.frames)
        try:
            self._frame(frame)
        except (AttributeError, TypeError, KeyError, ValueError):
            raise shape_error(self.frames, payload, self._problem(frame)) from None

    def _frame(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "content_block_delta":
            self._delta(frame["index"], frame["delta"])
        elif kind == "content_block_start":
            self._blocks[frame["index"]] = block = dict(frame["content_block"])
            if self.live is not None and block.get("type") == "tool_use":
                self._live_tool_start(block)
        elif kind == "message_start":
            usage = frame["message"].get("usage")
            self.usage = dict(usage) if usage else None
        elif kind == "message_delta":
            self.stop_reason = frame["delta"].get("stop_reason") or self.stop_reason
            usage = frame.get("usage")
            if usage:
                # Cumulative counts; keys not sent again keep message_start's values.
                self.usage = {
                    **(self.usage or {}),
                    **{k: v for k, v in usage.items() if v is not None},
                }
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            # Anthropic's error event (overloaded_error, api_error) after a 200: like a 5xx.
            raise error_frame(frame.get("error"))

    def _delta(self, index: int, delta: dict[str, Any]) -> None:
        block = self._blocks[index]
        kind = delta["type"]
        if self.first_token_at is None:
            self.first_token_at = datetime.now(UTC)
        live = self.live
        if kind == "text_delta":
            block["text"] = block.get("text", "") + delta["text"]
            if live is not None:
                live.content(delta["text"])
        elif kind == "input_json_delta":
            block["_json"] = block.get("_json", "") + delta["partial_json"]
            if live is not None:
                live.tool_call(
                    {
                        "index": block["_tool_index"],
                        "function": {"arguments": delta["partial_json"]},
                    }
                )
        elif kind == "thinking_delta":
            block["thinking"] = block.get("thinking", "") + delta["thinking"]
            if live is not None:
                live.reasoning(delta["thinking"])
        elif kind == "signature_delta":
            block["signature"] = block.get("signature", "") + delta["signature"]

    def _problem(self, frame: dict[str, Any]) -> str:
        """Which field of ``frame`` could not be read, and its JSON type; never a value.

        Only called once reading failed, so the common path pays nothing for it.
        """
        kind = frame.get("type")
        if not isinstance(kind, str) or kind not in _EVENTS:
            return "a field has an unexpected type"
        named = f"a {kind} event"
        if kind in ("content_block_start", "content_block_delta"):
            index = frame.get("index")
            if not isinstance(index, int) or isinstance(index, bool):
                return f"{named}: " + wrong_type("index", index, "an integer")
        if kind == "content_block_start":
            block = frame.get("content_block")
            if not isinstance(block, dict):
                return f"{named}: " + wrong_type("content_block", block, "an object")
        elif kind == "content_block_delta":
            if frame["index"] not in self._blocks:
                return f"{named}: index {frame['index']} names no started content block"
            delta = frame.get("delta")
            if not isinstance(delta, dict):
                return f"{named}: " + wrong_type("delta", delta, "an object")
            delta_type = delta.get("type")
            field = _DELTA_FIELDS.get(delta_type) if isinstance(delta_type, str) else None
            if field is None:
                return f"{named}: delta.type is not a known delta type"
            if not isinstance(delta.get(field), str):
                return f"{named}: " + wrong_type(f"delta.{field}", delta.get(field), "a string")
        elif kind == "message_start":
            message = frame.get("message")
            if not isinstance(message, dict):
                return f"{named}: " + wrong_type("message", message, "an object")
            usage = message.get("usage")
            if usage and not isinstance(usage, dict):
                return f"{named}: " + wrong_type("message.usage", usage, "an object")
        elif kind == "message_delta":
            delta, usage = frame.get("delta"), frame.get("usage")
            if not isinstance(delta, dict):
                return f"{named}: " + wrong_type("delta", delta, "an object")
            if usage and not isinstance(usage, dict):
                return f"{named}: " + wrong_type("usage", usage, "an object")
        return f"{named} has a field of an unexpected type"

    def _live_tool_start(self, block: dict[str, Any]) -> None:
        # Live readers get OpenAI-shaped fragments: the call's position among the tool
        # calls, then its id and name, then its arguments piece by piece.
        index = sum(1 for b in self._blocks.values() if b.get("type") == "tool_use") - 1
        block["_tool_index"] = index
        assert self.live is not None
        self.live.tool_call(
            {
                "index": index,
                "id": block.get("id"),
                "type": "function",
                "function": {"name": block.get("name", ""), "arguments": ""},
            }
        )

    def result(self, *, request_id: str | None) -> Completion:
        """The completion, if the stream really ended; otherwise BrokenStream."""
        if not self.done:
            raise BrokenStream(
                f"stream ended without message_stop after {self.frames} frames",
                request_id=request_id,
            )
        if self.stop_reason is None:
            raise BrokenStream(
                f"stream ended without a stop_reason after {self.frames} frames",
                request_id=request_id,
            )
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        thinking: list[dict[str, Any]] = []
        for index in sorted(self._blocks):
            block = self._blocks[index]
            kind = block.get("type")
            if kind == "text":
                texts.append(block.get("text", ""))
            elif kind == "tool_use":
                calls.append(_tool_call(block))
            elif kind == "thinking":
                thinking.append(
                    {
                        "type": "thinking",
                        "thinking": block.get("thinking", ""),
                        "signature": block.get("signature", ""),
                    }
                )
            elif kind == "redacted_thinking":
                thinking.append({"type": "redacted_thinking", "data": block.get("data", "")})
        reasoning = "".join(b["thinking"] for b in thinking if b["type"] == "thinking")
        return Completion(
            content="".join(texts) if texts or not calls else None,
            finish_reason=FINISH_REASONS.get(self.stop_reason, self.stop_reason),
            tool_calls=calls or None,
            reasoning_content=reasoning or None,
            usage=self.usage,
            first_token_at=self.first_token_at,
            request_id=request_id,
            surface="anthropic",
            thinking_blocks=thinking or None,
        )


def _tool_call(block: dict[str, Any]) -> dict[str, Any]:
    # Streamed input arrives as JSON fragments; a block started with its input whole
    # (no deltas) carries it in "input".
    arguments = block.get("_json")
    if arguments is None:
        arguments = json.dumps(block.get("input") or {}, ensure_ascii=False)
    return {
        "id": block.get("id"),
        "type": "function",
        "function": {"name": block.get("name", ""), "arguments": arguments or "{}"},
    }

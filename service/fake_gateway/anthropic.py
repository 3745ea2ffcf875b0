"""The fake's Anthropic surface: ``POST /anthropic/v1/messages`` bodies and SSE events.

Events follow Anthropic's streaming sequence: ``message_start`` (usage with
``input_tokens``, ``cache_creation_input_tokens``, ``cache_read_input_tokens``), ``ping``,
then per content block ``content_block_start`` / ``content_block_delta``… /
``content_block_stop`` (a ``thinking`` block with ``thinking_delta`` and
``signature_delta`` when thinking is on, then ``text`` or ``tool_use`` with
``input_json_delta``), ``message_delta`` (``stop_reason``, cumulative ``output_tokens``)
and ``message_stop``. As on the real API, a thinking block sent back with a signature the
fake did not issue, or a ``tool_result`` whose ``tool_use_id`` the previous assistant turn
did not ask for, is a 400. Prompt caching follows ``cache_control`` breakpoints: the
prefix up to the last breakpoint is written on first sight and read afterwards.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from collections.abc import Mapping
from typing import Any

from service.fake_gateway.replies import (
    count_tokens,
    lorem_words,
    new_completion_id,
    new_tool_call_id,
    split_chars,
    truncate_to_tokens,
    wants_tool,
)

MESSAGES_PATH = "/anthropic/v1/messages"
_SIGNING_KEY = b"fake-ezrouter-thinking"


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def sign(thinking: str) -> str:
    """The signature the fake attaches to a thinking block (verified when sent back)."""
    digest = hmac.new(_SIGNING_KEY, thinking.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def validate_messages_body(body: Mapping[str, Any]) -> str | None:
    """Why a Messages body is unacceptable (a 400), or None."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required"
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: Field required and must be a positive integer"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: Field required and must be a non-empty array"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if not isinstance(message.get("content"), str | list):
            return f"messages.{i}.content: Field required"
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or budget < 1024 or budget >= max_tokens:
            return "thinking.budget_tokens: must be >= 1024 and less than max_tokens"
    return _history_problem(messages)


def _blocks(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content or [] if isinstance(b, dict)]


def _history_problem(messages: list[dict[str, Any]]) -> str | None:
    asked: set[str] = set()
    for i, message in enumerate(messages):
        for j, block in enumerate(_blocks(message)):
            kind = block.get("type")
            if kind == "thinking" and block.get("signature") != sign(str(block.get("thinking"))):
                return f"messages.{i}.content.{j}: Invalid `signature` in `thinking` block"
            if kind == "tool_use":
                asked.add(str(block.get("id")))
            if kind == "tool_result" and block.get("tool_use_id") not in asked:
                return (
                    f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` "
                    "blocks; each tool_result must have a corresponding tool_use block"
                )
    return None


def _text_of(blocks: list[dict[str, Any]]) -> str:
    return "".join(str(b.get("text", "")) for b in blocks if b.get("type") == "text")


def last_user_text(body: Mapping[str, Any]) -> str:
    for message in reversed(body["messages"]):
        if message["role"] == "user":
            text = _text_of(_blocks(message))
            if text:
                return text
    return ""


class AnthropicCache:
    """Cache prefixes written by ``cache_control`` breakpoints, per model."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: set[bytes] = set()

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()

    def account(self, body: Mapping[str, Any]) -> tuple[int, int, int]:
        """(input_tokens, cache_creation_input_tokens, cache_read_input_tokens)."""
        pieces: list[Any] = [*(body.get("tools") or [])]
        system = body.get("system")
        pieces += [{"type": "text", "text": system}] if isinstance(system, str) else system or []
        for message in body["messages"]:
            pieces += [{"role": message["role"], **b} for b in _blocks(message)]
        tokens = [4 + count_tokens(_dumps(p)) for p in pieces]
        total = sum(tokens)
        marks = [i for i, p in enumerate(pieces) if isinstance(p, dict) and "cache_control" in p]
        if not marks:
            return total, 0, 0
        end = marks[-1] + 1
        prefix = sum(tokens[:end])
        key = hashlib.sha256(_dumps([body["model"], pieces[:end]]).encode()).digest()
        with self._lock:
            hit = key in self._seen
            self._seen.add(key)
        return (total - prefix, 0, prefix) if hit else (total - prefix, prefix, 0)


def _event(name: str, data: Mapping[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def error_event(message: str) -> bytes:
    """Anthropic's in-stream error event (the API's overloaded case)."""
    error = {"type": "overloaded_error", "message": message}
    return _event("error", {"type": "error", "error": error})


def _tool(body: Mapping[str, Any]) -> str:
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "tool":
        return str(choice.get("name"))
    return str(body["tools"][0]["name"])


def build_events(
    body: Mapping[str, Any],
    *,
    mode: str,
    reply_override: str | None,
    reply_words: int | None,
    chunk_chars: int,
    usage: tuple[int, int, int],
) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """(opening, content, closing) frames of one reply; faults cut or rearrange them.

    ``mode`` is ``text``, ``tool_calls`` (a tool_use block), ``tool_calls_broken``
    (``stop_reason: tool_use`` without one) or ``empty_content``.
    """
    model = body["model"]
    input_tokens, written, read = usage
    limit = int(body["max_tokens"])
    content: list[bytes] = []
    index = 0
    output = 0

    def block(start: dict[str, Any], deltas: list[dict[str, Any]]) -> None:
        nonlocal index
        content.append(
            _event(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": start},
            )
        )
        for delta in deltas:
            content.append(
                _event(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
            )
        content.append(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
        index += 1

    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"):
        text = f"Thinking about turn {len(body['messages'])}: {last_user_text(body)}"
        output += count_tokens(text)
        deltas = [{"type": "thinking_delta", "thinking": p} for p in split_chars(text, chunk_chars)]
        deltas.append({"type": "signature_delta", "signature": sign(text)})
        block({"type": "thinking", "thinking": "", "signature": ""}, deltas)

    stop_reason = "end_turn"
    if mode in ("tool_calls", "tool_calls_broken"):
        stop_reason = "tool_use"
        arguments = reply_override or json.dumps(
            {"input": last_user_text(body)}, ensure_ascii=False
        )
        output += count_tokens(arguments)
        if mode == "tool_calls":
            start = {"type": "tool_use", "id": new_tool_call_id(), "name": _tool(body), "input": {}}
            deltas = [
                {"type": "input_json_delta", "partial_json": p}
                for p in split_chars(arguments, chunk_chars)
            ]
            block(start, deltas)
    elif mode == "text":
        if reply_override is not None:
            text = reply_override
        elif reply_words is not None:
            text = lorem_words(reply_words)
        else:
            text = f"echo[{len(body['messages'])}]: {last_user_text(body)}"
        if output + count_tokens(text) > limit:
            text = truncate_to_tokens(text, limit - output)
            stop_reason = "max_tokens"
        output += count_tokens(text)
        block(
            {"type": "text", "text": ""},
            [{"type": "text_delta", "text": p} for p in split_chars(text, chunk_chars)],
        )

    start_usage = {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": read,
        "output_tokens": 1,
    }
    message = {
        "id": new_completion_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": start_usage,
    }
    opening = [
        _event("message_start", {"type": "message_start", "message": message}),
        _event("ping", {"type": "ping"}),
    ]
    closing = [
        _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": output},
            },
        ),
        _event("message_stop", {"type": "message_stop"}),
    ]
    return opening, content, closing


def reply_mode(body: Mapping[str, Any], fault_kind: str) -> str:
    """The reply a request gets: a scripted kind, else a tool call when one is wanted
    (tools offered, ``tool_choice`` not ``none``, the last turn a user's, not a tool result)."""
    if fault_kind in ("tool_calls", "tool_calls_broken", "empty_content"):
        return fault_kind
    choice = body.get("tool_choice")
    refused = isinstance(choice, dict) and choice.get("type") == "none"
    return "tool_calls" if not refused and wants_tool(body) else "text"

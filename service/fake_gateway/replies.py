"""Deterministic reply text, token accounting, prompt-cache simulation and chunk payloads."""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import string
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, TypeAlias

UsagePlacement: TypeAlias = Literal["separate", "finish"]
ReplyMode: TypeAlias = Literal["text", "tool_calls", "tool_calls_broken", "empty_content"]

# new-api returns this placeholder for every model instead of a release date (§7).
MODEL_CREATED = 1626777600
NEW_API_VERSION = "v0.9.0-fake"

# GW-005: automatic prompt caching never reports hits for this model on the OpenAI surface.
NO_CACHE_MODELS: frozenset[str] = frozenset({"claude-opus-4-7"})

# GW-001: on the OpenAI surface these end with finish_reason "tool_calls" but never send a
# tool_calls delta; kimi never asks for a tool there at all (ezrouter's probe, §3.3).
GW001_MODELS: frozenset[str] = frozenset(
    {"claude-sonnet-4-6", "claude-haiku-4-5", "deepseek-v4-pro", "deepseek-v4-flash", "glm-5.1"}
)
NO_TOOL_CALL_MODELS: frozenset[str] = frozenset({"kimi-k2.6"})

MESSAGE_OVERHEAD_TOKENS = 4
TOOLS_OVERHEAD_TOKENS = 8
REPLY_PRIMING_TOKENS = 3
CHARS_PER_TOKEN = 4

_BASE62 = string.digits + string.ascii_letters
_LOREM: tuple[str, ...] = (
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
    "eiusmod",
    "tempor",
)


def random_base62(length: int) -> str:
    """Return `length` random characters from [0-9A-Za-z]."""
    return "".join(secrets.choice(_BASE62) for _ in range(length))


def new_request_id() -> str:
    """Return a new-api style request id: local timestamp, nanoseconds, 8 random characters."""
    now = time.time_ns()
    stamp = time.strftime("%Y%m%d%H%M%S", time.localtime(now // 1_000_000_000))
    return f"{stamp}{now % 1_000_000_000}{random_base62(8)}"


def new_completion_id() -> str:
    """Return an Anthropic-style message id, as ezrouter passes through (§3.1)."""
    return "msg_01" + random_base62(22)


def new_tool_call_id() -> str:
    """Return an Anthropic-style tool-use id."""
    return "toolu_01" + random_base62(22)


@dataclass(frozen=True)
class ModelInfo:
    """One entry of the `GET /v1/models` catalog."""

    id: str
    owned_by: str = "custom"
    supported_endpoint_types: tuple[str, ...] = ("openai",)

    def to_json(self) -> dict[str, Any]:
        """Return the entry exactly as `/v1/models` serialises it."""
        return {
            "id": self.id,
            "object": "model",
            "created": MODEL_CREATED,
            "owned_by": self.owned_by,
            "supported_endpoint_types": list(self.supported_endpoint_types),
        }


_CLAUDE_SURFACES = ("anthropic", "openai")

DEFAULT_MODELS: Mapping[str, ModelInfo] = MappingProxyType(
    {
        m.id: m
        for m in (
            ModelInfo("claude-opus-4-7", "vertex-ai", _CLAUDE_SURFACES),
            ModelInfo("claude-sonnet-4-6", "vertex-ai", _CLAUDE_SURFACES),
            ModelInfo("claude-haiku-4-5", "vertex-ai", _CLAUDE_SURFACES),
            ModelInfo("deepseek-v4-pro"),
            ModelInfo("deepseek-v4-flash"),
            ModelInfo("glm-5.1"),
            ModelInfo("kimi-k2.6"),
            ModelInfo("gpt-5.1"),
        )
    }
)

ModelsArg: TypeAlias = Mapping[str, ModelInfo] | Iterable[str | ModelInfo]


def normalize_models(models: ModelsArg) -> dict[str, ModelInfo]:
    """Accept a mapping id -> ModelInfo, or an iterable of ids / ModelInfo, and key it by id."""
    if isinstance(models, Mapping):
        return {
            key: value if isinstance(value, ModelInfo) else ModelInfo(key)
            for key, value in models.items()
        }
    result: dict[str, ModelInfo] = {}
    for item in models:
        info = ModelInfo(item) if isinstance(item, str) else item
        result[info.id] = info
    return result


def count_tokens(text: str) -> int:
    """Count tokens the way every fake response does: one token per started 4 characters."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def truncate_to_tokens(text: str, tokens: int) -> str:
    """Cut `text` so that `count_tokens` of the result is at most `tokens`."""
    return text[: max(tokens, 0) * CHARS_PER_TOKEN]


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def content_text(content: Any) -> str:
    """Flatten a message `content` (string, null or content-part list) to plain text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        return "".join(p for p in parts if isinstance(p, str))
    return _dumps(content)


def message_tokens(message: Any) -> int:
    """Prompt tokens for one message, including a fixed per-message overhead."""
    if not isinstance(message, dict):
        return MESSAGE_OVERHEAD_TOKENS + count_tokens(_dumps(message))
    tokens = MESSAGE_OVERHEAD_TOKENS + count_tokens(content_text(message.get("content")))
    for key in ("name", "tool_call_id"):
        value = message.get(key)
        if isinstance(value, str):
            tokens += count_tokens(value)
    if message.get("tool_calls"):
        tokens += count_tokens(_dumps(message["tool_calls"]))
    return tokens


def tools_tokens(tools: Any) -> int:
    """Prompt tokens spent on tool definitions."""
    if not tools:
        return 0
    return TOOLS_OVERHEAD_TOKENS + count_tokens(_dumps(tools))


def last_user_content(messages: Sequence[Any]) -> str:
    """Text of the last `user` message, or "" when there is none."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def lorem_words(count: int) -> str:
    """Return `count` space-separated lorem-ipsum words."""
    return " ".join(_LOREM[i % len(_LOREM)] for i in range(count))


def default_reply(messages: Sequence[Any], reply_words: int | None) -> str:
    """The reply text for a request: an echo that reveals the history length, or lorem ipsum."""
    if reply_words is not None:
        return lorem_words(reply_words)
    return f"echo[{len(messages)}]: {last_user_content(messages)}"


def reasoning_text(messages: Sequence[Any]) -> str:
    """Deterministic thinking text emitted as `delta.reasoning_content`."""
    return f"Thinking about message {len(messages)}: {last_user_content(messages)}"


def thinking_enabled(body: Mapping[str, Any]) -> bool:
    """Whether the request switched thinking on via the non-OpenAI `thinking` field (§2)."""
    thinking = body.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") in {"enabled", "adaptive"}


def wants_tool(body: Mapping[str, Any]) -> bool:
    """Whether the fake's "model" calls a tool: tools are offered, not refused by
    ``tool_choice: "none"``, and the conversation ends with a user turn (not a tool result)."""
    if not body.get("tools") or body.get("tool_choice") == "none":
        return False
    messages = body.get("messages") or []
    last = messages[-1] if messages else None
    if not isinstance(last, dict) or last.get("role") != "user":
        return False
    content = last.get("content")
    # Anthropic-shaped bodies carry tool results as tool_result blocks in a user turn.
    return not (
        isinstance(content, list)
        and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content)
    )


def openai_tool_mode(model: str) -> ReplyMode:
    """How a model answers a tool request on the OpenAI surface, GW-001 included."""
    if model in GW001_MODELS:
        return "tool_calls_broken"
    if model in NO_TOOL_CALL_MODELS:
        return "text"
    return "tool_calls"


def max_tokens_of(body: Mapping[str, Any]) -> int | None:
    """The output cap from `max_tokens`, falling back to `max_completion_tokens`."""
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


class PromptCache:
    """Remembers message-list prefixes per model so later requests can report cache hits."""

    # A bound keeps long benchmark runs from growing memory without limit.
    MAX_ENTRIES = 200_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[bytes, int] = {}

    def clear(self) -> None:
        """Forget every remembered prefix."""
        with self._lock:
            self._seen.clear()

    def account(self, model: str, tools: Any, messages: Sequence[Any]) -> tuple[int, int]:
        """Return (prompt_tokens, tokens of the longest already-seen prefix); remember this one."""
        # Chained hashes make every prefix key O(1) to derive from the previous one.
        digest = hashlib.sha256(_dumps([model, tools]).encode()).digest()
        running = tools_tokens(tools)
        prefixes: list[tuple[bytes, int]] = []
        for message in messages:
            digest = hashlib.sha256(digest + _dumps(message).encode()).digest()
            running += message_tokens(message)
            prefixes.append((digest, running))
        prompt_tokens = running + REPLY_PRIMING_TOKENS
        with self._lock:
            seen = next((t for key, t in reversed(prefixes) if key in self._seen), 0)
            if len(self._seen) + len(prefixes) > self.MAX_ENTRIES:
                self._seen.clear()
            self._seen.update(prefixes)
        return prompt_tokens, seen


def build_usage(
    *,
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int,
    reasoning_tokens: int,
    output_tokens_zero: bool,
) -> dict[str, Any]:
    """The usage object in new-api's `dto.Usage` shape plus ezrouter's extensions (§5)."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {
            "cached_tokens": cached_tokens,
            "text_tokens": 0,
            "audio_tokens": 0,
            "image_tokens": 0,
        },
        "completion_tokens_details": {
            "reasoning_tokens": reasoning_tokens,
            "text_tokens": 0,
            "audio_tokens": 0,
            "image_tokens": 0,
        },
        "usage_semantic": "anthropic" if model.startswith("claude-") else "openai",
        "input_tokens": prompt_tokens,
        "output_tokens": 0 if output_tokens_zero else completion_tokens,
    }


def split_chars(text: str, size: int) -> list[str]:
    """Split `text` into pieces of at most `size` characters."""
    return [text[i : i + size] for i in range(0, len(text), size)]


@dataclass
class ChunkFactory:
    """Builds `chat.completion.chunk` objects that share one id, timestamp and model."""

    model: str
    completion_id: str = field(default_factory=new_completion_id)
    created: int = field(default_factory=lambda: int(time.time()))

    def _base(self) -> dict[str, Any]:
        return {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
        }

    def chunk(
        self,
        delta: dict[str, Any],
        finish_reason: str | None = None,
        usage: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A chunk with a single choice."""
        result = self._base()
        result["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
        if usage is not None:
            result["usage"] = usage
        return result

    def usage_chunk(self, usage: dict[str, Any]) -> dict[str, Any]:
        """The trailing new-api usage chunk with empty `choices`."""
        result = self._base()
        result["choices"] = []
        result["usage"] = usage
        return result


@dataclass
class ReplyPlan:
    """Every payload of one complete response, which fault kinds then cut or rearrange."""

    opening: dict[str, Any]
    body: list[dict[str, Any]]
    finish: dict[str, Any]
    trailer: dict[str, Any] | None
    usage: dict[str, Any]


def _tool_name(tools: Any) -> str:
    if isinstance(tools, list):
        for tool in tools:
            if isinstance(tool, dict) and isinstance(tool.get("function"), dict):
                name = tool["function"].get("name")
                if isinstance(name, str) and name:
                    return name
    return "get_weather"


def build_plan(
    body: Mapping[str, Any],
    *,
    mode: ReplyMode,
    reply_override: str | None,
    reply_words: int | None,
    chunk_chars: int,
    usage_placement: UsagePlacement,
    output_tokens_zero: bool,
    prompt_tokens: int,
    cached_tokens: int,
    usage_override: Mapping[str, Any] | None = None,
) -> ReplyPlan:
    """Lay out the chunks of a response to a validated chat request (``usage_override``:
    fields laid over the usage object it reports)."""
    model: str = body["model"]
    messages: list[Any] = body["messages"]
    factory = ChunkFactory(model)
    limit = max_tokens_of(body)
    reasoning = reasoning_text(messages) if thinking_enabled(body) else ""
    if limit is not None:
        reasoning = truncate_to_tokens(reasoning, limit)
    reasoning_tokens = count_tokens(reasoning)
    chunks = [factory.chunk({"reasoning_content": p}) for p in split_chars(reasoning, chunk_chars)]

    finish_reason = "stop"
    if mode == "text":
        content = (
            reply_override if reply_override is not None else default_reply(messages, reply_words)
        )
        if limit is not None and reasoning_tokens + count_tokens(content) > limit:
            content = truncate_to_tokens(content, limit - reasoning_tokens)
            finish_reason = "length"
        output_tokens = count_tokens(content)
        chunks += [factory.chunk({"content": p}) for p in split_chars(content, chunk_chars)]
    elif mode == "empty_content":
        output_tokens = 0
    else:
        name = _tool_name(body.get("tools"))
        if reply_override is not None:
            arguments = reply_override
        else:
            arguments = json.dumps({"input": last_user_content(messages)}, ensure_ascii=False)
        output_tokens = count_tokens(name) + count_tokens(arguments)
        finish_reason = "tool_calls"
        if mode == "tool_calls":
            head = {
                "index": 0,
                "id": new_tool_call_id(),
                "type": "function",
                "function": {"name": name, "arguments": ""},
            }
            chunks.append(factory.chunk({"tool_calls": [head]}))
            chunks += [
                factory.chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]})
                for p in split_chars(arguments, chunk_chars)
            ]

    usage = build_usage(
        model=model,
        prompt_tokens=prompt_tokens,
        completion_tokens=reasoning_tokens + output_tokens,
        cached_tokens=cached_tokens,
        reasoning_tokens=reasoning_tokens,
        output_tokens_zero=output_tokens_zero,
    )
    usage.update(usage_override or {})
    on_finish = usage_placement == "finish"
    return ReplyPlan(
        opening=factory.chunk({"role": "assistant", "content": ""}),
        body=chunks,
        finish=factory.chunk({}, finish_reason, usage if on_finish else None),
        trailer=None if on_finish else factory.usage_chunk(usage),
        usage=usage,
    )

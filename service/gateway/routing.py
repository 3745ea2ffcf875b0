"""Which ezrouter surface a request goes to. Pure functions: no SDK, no I/O.

``auto`` sends a claude model to the Anthropic surface when the request needs what only
that surface does reliably — tool calls (GW-001 breaks them on the OpenAI surface for
every claude model but opus), extended thinking across turns (the OpenAI surface drops
``reasoning_content``) and prompt caching with ``cache_control`` (GW-005) — and every
other request to the OpenAI surface, which carries the whole catalog and every OpenAI
field. A request using a field the Anthropic surface has no equivalent for stays on the
OpenAI surface under ``auto``, and is refused at enqueue when it names ``anthropic``.
"""

from __future__ import annotations

from typing import Any

# Fields with no Anthropic Messages equivalent (dropping them would change the reply).
OPENAI_ONLY_PARAMS = (
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
)
# What the Anthropic Messages API reads from a base64 file part.
ANTHROPIC_FILE_TYPES = ("application/pdf", "text/plain")


def is_claude(model: str) -> bool:
    return model.startswith("claude-")


def thinking_on(params: dict[str, Any]) -> bool:
    thinking = params.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")


def _parts(messages: list[dict[str, Any]]) -> list[tuple[int, int, dict[str, Any]]]:
    found = []
    for i, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, list):
            found += [(i, j, part) for j, part in enumerate(content) if isinstance(part, dict)]
    return found


def has_cache_hints(messages: list[dict[str, Any]], params: dict[str, Any]) -> bool:
    """Whether any part or tool carries an Anthropic ``cache_control`` breakpoint."""
    tools = params.get("tools") or []
    return any("cache_control" in p for _, _, p in _parts(messages)) or any(
        isinstance(t, dict) and "cache_control" in t for t in tools
    )


def has_thinking_history(messages: list[dict[str, Any]]) -> bool:
    return any(m.get("thinking_blocks") for m in messages if m.get("role") == "assistant")


def data_url_type(url: str) -> str | None:
    """The media type of a ``data:<type>;base64,`` URL, or None for anything else."""
    if not url.startswith("data:") or ";base64," not in url:
        return None
    return url[5:].split(";", 1)[0] or None


def anthropic_problem(
    messages: list[dict[str, Any]], params: dict[str, Any]
) -> tuple[str, str] | None:
    """The first field the Anthropic surface cannot carry, as (path, reason), or None."""
    for name in OPENAI_ONLY_PARAMS:
        if name in params:
            return f"params.{name}", "has no equivalent on the anthropic surface"
    response_format = params.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") != "text":
        return "params.response_format", "has no equivalent on the anthropic surface"
    temperature = params.get("temperature")
    if isinstance(temperature, int | float) and temperature > 1:
        return "params.temperature", "must be at most 1 on the anthropic surface"
    limit_name = "max_tokens" if "max_tokens" in params else "max_completion_tokens"
    limit = params.get(limit_name)
    if thinking_on(params) and isinstance(limit, int):
        budget = params["thinking"].get("budget_tokens") or 1024
        if limit <= budget:
            return (
                f"params.{limit_name}",
                f"must be above the thinking budget ({budget}) on the anthropic surface, "
                "where thinking counts against it",
            )
    for i, j, part in _parts(messages):
        where = f"messages[{i}].content[{j}]"
        kind = part.get("type")
        if kind == "input_audio":
            return where, "audio input has no equivalent on the anthropic surface"
        if kind == "file":
            data = (part.get("file") or {}).get("file_data")
            media = data_url_type(data) if isinstance(data, str) else None
            if media not in ANTHROPIC_FILE_TYPES:
                return (
                    f"{where}.file",
                    "the anthropic surface takes files only as base64 data URLs of "
                    + " or ".join(ANTHROPIC_FILE_TYPES),
                )
        if kind == "image_url":
            url = str((part.get("image_url") or {}).get("url", ""))
            if not url.startswith(("http://", "https://")) and data_url_type(url) is None:
                return f"{where}.image_url.url", "must be an http(s) URL or a base64 data URL"
    return None


def wants_anthropic(model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> bool:
    """``auto``'s rule: a claude model with tools, thinking or cache hints."""
    if not is_claude(model):
        return False
    needs = (
        bool(params.get("tools"))
        or thinking_on(params)
        or has_thinking_history(messages)
        or has_cache_hints(messages, params)
    )
    return needs and anthropic_problem(messages, params) is None


def choose_surface(
    requested: str, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
) -> str:
    """``openai`` or ``anthropic`` for a request that asked for ``requested``."""
    if requested in ("openai", "anthropic"):
        return requested
    return "anthropic" if wants_anthropic(model, messages, params) else "openai"

"""Which ezrouter surface a request goes to. Pure functions: no SDK, no I/O.

``auto`` sends a claude model to the Anthropic surface when the request needs what only
that surface does reliably — tool calls (GW-001 breaks them on the OpenAI surface for
every claude model but opus), extended thinking across turns (the OpenAI surface drops
``reasoning_content``) and prompt caching with ``cache_control`` (GW-005) — and every
other request to the OpenAI surface, which carries the whole catalog and every OpenAI
field. A request using a field the Anthropic surface has no equivalent for (or a setting
the Anthropic API refuses beside thinking) stays on the OpenAI surface under ``auto``, and
is refused at enqueue when it names ``anthropic``; a field set to a value that changes
nothing (a penalty of 0, ``logprobs: false``) does not count.
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
# The only base64 image types the Anthropic Messages API takes.
ANTHROPIC_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
# With thinking on, the Anthropic API refuses top_p below this (and any temperature but 1,
# and a tool_choice that forces a tool).
THINKING_MIN_TOP_P = 0.95


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


def openai_only_param(params: dict[str, Any]) -> str | None:
    """The first field used that only the OpenAI surface carries, or None.

    A value that changes nothing (OpenAI's default: a penalty of 0, ``logprobs: false``,
    an empty ``logit_bias``) does not count: the Anthropic surface, which never sends these
    fields, serves such a request exactly as written. ``seed`` always counts.
    """
    for name in OPENAI_ONLY_PARAMS:
        if name in params and not _neutral(name, params[name]):
            return name
    return None


def _neutral(name: str, value: Any) -> bool:
    if name in ("presence_penalty", "frequency_penalty"):
        return isinstance(value, int | float) and not isinstance(value, bool) and value == 0
    if name == "logprobs":
        return value is False
    if name == "logit_bias":
        return isinstance(value, dict) and not value
    return False


def _forced_tool(choice: Any) -> bool:
    return choice == "required" or isinstance(choice, dict)


def params_problem(params: dict[str, Any]) -> tuple[str, str] | None:
    """The first parameter the Anthropic surface cannot carry, as (path, reason), or None."""
    name = openai_only_param(params)
    if name is not None:
        return f"params.{name}", "has no equivalent on the anthropic surface"
    response_format = params.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") != "text":
        return "params.response_format", "has no equivalent on the anthropic surface"
    temperature = params.get("temperature")
    top_p = params.get("top_p")
    if thinking_on(params):
        # What the Anthropic API refuses beside thinking (it would answer 400).
        if isinstance(temperature, int | float) and temperature != 1:
            return (
                "params.temperature",
                "must be 1 (or unset) with thinking on the anthropic surface",
            )
        if isinstance(top_p, int | float) and top_p < THINKING_MIN_TOP_P:
            return (
                "params.top_p",
                f"must be at least {THINKING_MIN_TOP_P} (or unset) with thinking on the "
                "anthropic surface",
            )
        if _forced_tool(params.get("tool_choice")):
            return (
                "params.tool_choice",
                "cannot force a tool with thinking on the anthropic surface "
                "(only 'auto' or 'none')",
            )
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
    return None


def part_problem(part: dict[str, Any]) -> tuple[str, str] | None:
    """Why the Anthropic surface cannot carry this content part, as (the path below the
    part, reason), or None when it can."""
    kind = part.get("type")
    if kind == "input_audio":
        return "", "audio input has no equivalent on the anthropic surface"
    if kind == "file":
        data = (part.get("file") or {}).get("file_data")
        media = data_url_type(data) if isinstance(data, str) else None
        if media not in ANTHROPIC_FILE_TYPES:
            return (
                ".file",
                "the anthropic surface takes files only as base64 data URLs of "
                + " or ".join(ANTHROPIC_FILE_TYPES),
            )
    if kind == "image_url":
        url = str((part.get("image_url") or {}).get("url", ""))
        media = data_url_type(url)
        if not url.startswith(("http://", "https://")) and media is None:
            return ".image_url.url", "must be an http(s) URL or a base64 data URL"
        if media is not None and media not in ANTHROPIC_IMAGE_TYPES:
            return (
                ".image_url.url",
                f"is a {media} image; the anthropic surface takes base64 images only as "
                + ", ".join(ANTHROPIC_IMAGE_TYPES),
            )
    return None


def messages_problem(messages: list[dict[str, Any]]) -> tuple[str, str] | None:
    """The first content part the Anthropic surface cannot carry, as (path, reason), or
    None; ``messages[i]`` counts from the start of ``messages``."""
    for i, j, part in _parts(messages):
        problem = part_problem(part)
        if problem is not None:
            below, reason = problem
            return f"messages[{i}].content[{j}]{below}", reason
    return None


def anthropic_problem(
    messages: list[dict[str, Any]], params: dict[str, Any]
) -> tuple[str, str] | None:
    """The first field the Anthropic surface cannot carry, as (path, reason), or None."""
    return params_problem(params) or messages_problem(messages)


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

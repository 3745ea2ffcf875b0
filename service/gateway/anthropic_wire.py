"""OpenAI-shaped requests into Anthropic Messages bodies, at the gateway boundary.

Producers and the stored history speak OpenAI; only this module knows the Anthropic
shape. System messages become the top-level ``system``; content parts become blocks
(``cache_control`` kept); assistant ``tool_calls`` become ``tool_use`` blocks and tool
messages ``tool_result`` blocks; the thinking blocks a previous reply carried go back
first in their assistant turn, signatures untouched. Messages' ``name`` has no
Anthropic equivalent and is dropped.
"""

from __future__ import annotations

import json
from typing import Any

from service import constants as c
from service.gateway.routing import data_url_type, thinking_on

# Anthropic stop reasons as OpenAI finish reasons.
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def _cached(block: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    if "cache_control" in part:
        block["cache_control"] = part["cache_control"]
    return block


def _image(part: dict[str, Any]) -> dict[str, Any]:
    url = str(part["image_url"]["url"])
    media = data_url_type(url)
    if media is None:
        source: dict[str, Any] = {"type": "url", "url": url}
    else:
        source = {"type": "base64", "media_type": media, "data": url.split(",", 1)[1]}
    return _cached({"type": "image", "source": source}, part)


def _file(part: dict[str, Any]) -> dict[str, Any]:
    file = part["file"]
    data = str(file["file_data"])
    media = data_url_type(data) or "application/pdf"
    block: dict[str, Any] = {
        "type": "document",
        "source": {"type": "base64", "media_type": media, "data": data.split(",", 1)[-1]},
    }
    if file.get("filename"):
        block["title"] = file["filename"]
    return _cached(block, part)


def content_blocks(content: Any) -> list[dict[str, Any]]:
    """A message's OpenAI content as Anthropic content blocks."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for part in content:
        kind = part.get("type")
        if kind == "text":
            blocks.append(_cached({"type": "text", "text": part["text"]}, part))
        elif kind == "image_url":
            blocks.append(_image(part))
        elif kind == "file":
            blocks.append(_file(part))
        elif kind == "refusal":
            blocks.append({"type": "text", "text": part["refusal"]})
    return blocks


def _arguments(raw: str) -> Any:
    try:
        return json.loads(raw) if raw.strip() else {}
    except ValueError:
        # Anthropic wants an object; keep what was sent rather than lose it.
        return {"arguments": raw}


def _assistant(message: dict[str, Any]) -> list[dict[str, Any]]:
    blocks = [dict(b) for b in message.get("thinking_blocks") or []]
    blocks += content_blocks(message.get("content"))
    for call in message.get("tool_calls") or []:
        function = call["function"]
        blocks.append(
            {
                "type": "tool_use",
                "id": call["id"],
                "name": function["name"],
                "input": _arguments(function.get("arguments") or ""),
            }
        )
    return blocks


def _tool_result(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message["tool_call_id"]}
    result["content"] = content if isinstance(content, str) else content_blocks(content)
    return result


def _turns(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, alternating turns); consecutive same-role blocks share one turn."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = message["role"]
        if role == "system":
            system += content_blocks(message.get("content"))
            continue
        if role == "assistant":
            blocks, anthropic_role = _assistant(message), "assistant"
        elif role == "tool":
            blocks, anthropic_role = [_tool_result(message)], "user"
        else:
            blocks, anthropic_role = content_blocks(message.get("content")), "user"
        if turns and turns[-1]["role"] == anthropic_role:
            turns[-1]["content"] += blocks
        else:
            turns.append({"role": anthropic_role, "content": blocks})
    return system, turns


def _tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for tool in tools:
        function = tool["function"]
        converted: dict[str, Any] = {
            "name": function["name"],
            "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
        }
        if function.get("description"):
            converted["description"] = function["description"]
        out.append(_cached(converted, tool))
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if choice is None and parallel is not False:
        return None
    if isinstance(choice, dict):
        converted: dict[str, Any] = {"type": "tool", "name": choice["function"]["name"]}
    else:
        kind = {"auto": "auto", "required": "any", "none": "none"}.get(str(choice), "auto")
        converted = {"type": kind}
    if parallel is False and converted["type"] != "none":
        converted["disable_parallel_tool_use"] = True
    return converted


def _limits(params: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
    """(max_tokens, thinking): Anthropic needs max_tokens, and above the thinking budget."""
    asked = params.get("max_tokens") or params.get("max_completion_tokens")
    if not thinking_on(params):
        return int(asked or c.ANTHROPIC_DEFAULT_MAX_TOKENS), None
    thinking = dict(params["thinking"])
    if thinking["type"] == "adaptive":
        return int(asked or c.ANTHROPIC_DEFAULT_MAX_TOKENS), thinking
    budget = thinking.get("budget_tokens") or c.ANTHROPIC_THINKING_BUDGETS.get(
        str(params.get("reasoning_effort")), c.ANTHROPIC_DEFAULT_THINKING_BUDGET
    )
    if asked is None:
        max_tokens = budget + c.ANTHROPIC_DEFAULT_MAX_TOKENS
    else:
        max_tokens = int(asked)
        budget = min(budget, max(max_tokens - 1, 1024))
    return max_tokens, {"type": "enabled", "budget_tokens": budget}


def to_anthropic(
    model: str, messages: list[dict[str, Any]], params: dict[str, Any]
) -> dict[str, Any]:
    """The ``POST /v1/messages`` body (without ``stream``) for an OpenAI-shaped request."""
    system, turns = _turns(messages)
    max_tokens, thinking = _limits(params)
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": turns}
    if system:
        body["system"] = system
    if thinking is not None:
        body["thinking"] = thinking
    for name in ("temperature", "top_p"):
        if name in params:
            body[name] = params[name]
    stop = params.get("stop")
    if stop is not None:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if params.get("tools"):
        body["tools"] = _tools(params["tools"])
    choice = _tool_choice(params.get("tool_choice"), params.get("parallel_tool_calls"))
    if choice is not None:
        body["tool_choice"] = choice
    user = params.get("user_id") or params.get("user")
    if user:
        body["metadata"] = {"user_id": user}
    return body

"""OpenAI-shaped requests into Anthropic Messages bodies, at the gateway boundary.

Producers and the stored history speak OpenAI; only this module knows the Anthropic
shape. System messages become the top-level ``system``; content parts become blocks
(``cache_control`` kept); assistant ``tool_calls`` become ``tool_use`` blocks and tool
messages ``tool_result`` blocks; the thinking blocks a previous reply carried go back
first in their assistant turn, signatures untouched. Messages' ``name`` has no
Anthropic equivalent and is dropped.

The Messages API refuses empty text blocks and messages with no content, so empty text is
left out, and an assistant message left with nothing is left out too; a part with no
Anthropic form fails the call before it is sent (``UntranslatablePart``).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from service import constants as c
from service.errors import PermanentGatewayError
from service.gateway.routing import ANTHROPIC_FILE_TYPES, data_url_type, thinking_on

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


class UntranslatablePart(PermanentGatewayError):
    """A part of the request has no Anthropic Messages form; nothing was sent.

    Permanent (``client_error``, no HTTP status): the same request fails the same way on
    every attempt, so the job fails at once. ``routing.anthropic_problem`` refuses the part
    kinds and media types this surface cannot carry before any call; what only translating
    finds (base64 that does not decode, text that is not UTF-8, a user turn left empty)
    fails here, and the rest is a last line behind that check. ``where`` is
    ``messages[i].content[j]``, ``i`` counted over the whole list sent (history first).
    """

    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        super().__init__(f"{where}: {reason} (the anthropic surface cannot send it)")


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


def _plain_text(encoded: str, where: str) -> str:
    """A base64 text/plain payload as text: the Messages API takes plain text decoded."""
    try:
        # Line breaks (MIME-wrapped base64) are no error; any other stray character is.
        return base64.b64decode("".join(encoded.split()), validate=True).decode("utf-8")
    except binascii.Error:
        raise UntranslatablePart(where, "file_data is not valid base64") from None
    except UnicodeDecodeError:
        raise UntranslatablePart(where, "text/plain file_data is not UTF-8") from None


def _document_source(file: dict[str, Any], where: str) -> dict[str, Any]:
    """A file part's data URL as a document source: base64 for a PDF, decoded for text."""
    data = file.get("file_data")
    if not isinstance(data, str):
        # A file_id names a file uploaded to OpenAI, which the Anthropic surface cannot read.
        raise UntranslatablePart(where, "a file part needs file_data (file_id is OpenAI's)")
    media = data_url_type(data)
    if media not in ANTHROPIC_FILE_TYPES:
        raise UntranslatablePart(
            where, "file_data must be a base64 data URL of " + " or ".join(ANTHROPIC_FILE_TYPES)
        )
    encoded = data.split(",", 1)[1]
    if media == "text/plain":
        return {"type": "text", "media_type": media, "data": _plain_text(encoded, where)}
    return {"type": "base64", "media_type": media, "data": encoded}


def _file(part: dict[str, Any], where: str) -> dict[str, Any]:
    file = part.get("file") or {}
    block: dict[str, Any] = {"type": "document", "source": _document_source(file, where)}
    if file.get("filename"):
        block["title"] = file["filename"]
    return _cached(block, part)


def _text(text: str, part: dict[str, Any]) -> list[dict[str, Any]]:
    # The Messages API refuses an empty text block: "" adds nothing, so it is left out.
    return [_cached({"type": "text", "text": text}, part)] if text else []


def _part_blocks(part: dict[str, Any], where: str) -> list[dict[str, Any]]:
    kind = part.get("type")
    if kind == "text":
        return _text(part["text"], part)
    if kind == "refusal":
        return _text(part["refusal"], {})
    if kind == "image_url":
        return [_image(part)]
    if kind == "file":
        return [_file(part, where)]
    # Dropping it (audio, say) would answer another question than the one asked.
    raise UntranslatablePart(where, f"a {kind!r} part has no equivalent")


def content_blocks(content: Any, where: str = "content") -> list[dict[str, Any]]:
    """A message's OpenAI content as Anthropic content blocks (``where`` names it in errors)."""
    if content is None:
        return []
    if isinstance(content, str):
        return _text(content, {})
    blocks = []
    for j, part in enumerate(content):
        blocks += _part_blocks(part, f"{where}[{j}]")
    return blocks


def _arguments(raw: str) -> Any:
    try:
        return json.loads(raw) if raw.strip() else {}
    except ValueError:
        # Anthropic wants an object; keep what was sent rather than lose it.
        return {"arguments": raw}


def _assistant(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    blocks = [dict(b) for b in message.get("thinking_blocks") or []]
    said = content_blocks(message.get("content"), f"{where}.content")
    # An OpenAI reply holds either content or a refusal: the refusal is what was said.
    blocks += said or _text(message.get("refusal") or "", {})
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


def _tool_result(message: dict[str, Any], where: str) -> dict[str, Any]:
    content = message.get("content")
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message["tool_call_id"]}
    if isinstance(content, str):
        sent: Any = content
    else:
        sent = content_blocks(content, f"{where}.content")
    # ``content`` is optional on a tool_result, but an empty text block is refused: an
    # empty result goes without it (the tool_result itself is always kept).
    if sent:
        result["content"] = sent
    return result


def _message_blocks(message: dict[str, Any], where: str) -> tuple[str, list[dict[str, Any]]]:
    """(Anthropic role, blocks) of one non-system message."""
    role = message["role"]
    if role == "assistant":
        return "assistant", _assistant(message, where)
    if role == "tool":
        return "user", [_tool_result(message, where)]
    return "user", content_blocks(message.get("content"), f"{where}.content")


def _turns(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, alternating turns); consecutive same-role blocks share one turn."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    first_of_turn: list[int] = []  # the index of each turn's first message, for errors
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if message["role"] == "system":
            system += content_blocks(message.get("content"), f"{where}.content")
            continue
        role, blocks = _message_blocks(message, where)
        if role == "assistant" and not blocks:
            # Nothing was said (an empty reply): leaving it out lets the user turns on
            # either side merge, so the turns still alternate.
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += blocks
        else:
            turns.append({"role": role, "content": blocks})
            first_of_turn.append(i)
    if not turns:
        raise UntranslatablePart("messages", "no user or assistant message has content")
    _refuse_empty_turns(turns, first_of_turn)
    return system, turns


def _refuse_empty_turns(turns: list[dict[str, Any]], first_of_turn: list[int]) -> None:
    """An empty user turn cannot be sent, and leaving it out would change the request (the
    assistant replies around it would merge, or the last one become a prefill to continue):
    it fails, named."""
    for turn, i in zip(turns, first_of_turn, strict=True):
        if not turn["content"]:
            raise UntranslatablePart(f"messages[{i}].content", "a user message with no content")


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


def _tool_choice(choice: Any, parallel: Any, has_tools: bool) -> dict[str, Any] | None:
    # Anthropic refuses a tool_choice without tools, and without tools there is no choice.
    if not has_tools or (choice is None and parallel is not False):
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
        # Adaptive thinking takes no budget (the model sizes its own thinking; the SDK's
        # ThinkingConfigAdaptiveParam has only type and display): budget_tokens is enabled's.
        return int(asked or c.ANTHROPIC_DEFAULT_MAX_TOKENS), {"type": "adaptive"}
    budget = thinking.get("budget_tokens") or c.ANTHROPIC_THINKING_BUDGETS.get(
        str(params.get("reasoning_effort")), c.ANTHROPIC_DEFAULT_THINKING_BUDGET
    )
    if asked is None:
        max_tokens = budget + c.ANTHROPIC_DEFAULT_MAX_TOKENS
    else:
        max_tokens = int(asked)
        budget = min(budget, max(max_tokens - 1, 1024))
    return max_tokens, {"type": "enabled", "budget_tokens": budget}


def anthropic_max_tokens(params: dict[str, Any]) -> int:
    """The ``max_tokens`` this surface sends for ``params`` (its own default when they name
    none), which flow control reserves."""
    return _limits(params)[0]


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
    choice = _tool_choice(
        params.get("tool_choice"), params.get("parallel_tool_calls"), "tools" in body
    )
    if choice is not None:
        body["tool_choice"] = choice
    user = params.get("user_id") or params.get("user")
    if user:
        body["metadata"] = {"user_id": user}
    return body

"""Checks on an assembled reply that the gateway reported as finished.

A reply can end cleanly and still be unusable: ezrouter's GW-001 ends with
``finish_reason: "tool_calls"`` and no tool call at all, and a strict ``json_schema``
request can come back with text that does not match. Neither is stored as a success.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema

from service.completion import Completion
from service.errors import GatewayToolCallsMissing, ReplyNotMatchingSchema


def tool_call_problem(tool_calls: list[dict[str, Any]] | None) -> str | None:
    """Why these tool calls cannot be executed by the caller, or None when they can."""
    if not tool_calls:
        return "no tool call was sent"
    for i, call in enumerate(tool_calls):
        function = call.get("function") or {}
        if not call.get("id"):
            return f"tool call {i} has no id"
        if not function.get("name"):
            return f"tool call {i} has no function name"
        arguments = function.get("arguments") or "{}"
        try:
            parsed = json.loads(arguments)
        except ValueError:
            return f"tool call {i} ({function['name']}) has arguments that are not JSON"
        if not isinstance(parsed, dict):
            return f"tool call {i} ({function['name']}) has arguments that are not an object"
    return None


def check_tool_calls(completion: Completion) -> None:
    """GW-001: a ``tool_calls`` finish needs tool calls the caller can run."""
    if completion.finish_reason != "tool_calls":
        return
    problem = tool_call_problem(completion.tool_calls)
    if problem is not None:
        raise GatewayToolCallsMissing(
            f'finish_reason "tool_calls" but {problem} (ezrouter GW-001; use the anthropic '
            "surface or claude-opus-4-7 for tool calls)",
            status=completion.http_status,
            request_id=completion.request_id,
        )


def strict_schema(params: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON Schema a reply must match, when the request asked for a strict one."""
    response_format = params.get("response_format") or {}
    if response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema") or {}
    schema = spec.get("schema")
    return schema if spec.get("strict") is True and isinstance(schema, dict) else None


def check_json_schema(completion: Completion, params: dict[str, Any]) -> None:
    """A strict ``json_schema`` reply must parse and match; tool-call replies carry no JSON."""
    schema = strict_schema(params)
    if schema is None or completion.tool_calls:
        return
    try:
        value = json.loads(completion.content or "")
    except ValueError:
        raise ReplyNotMatchingSchema(
            f"the reply is not JSON (finish_reason {completion.finish_reason})",
            status=completion.http_status,
            request_id=completion.request_id,
        ) from None
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is not None:
        # Named by path and rule only: the reply's own values never reach logs or errors.
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        rule = json.dumps(error.validator_value, ensure_ascii=False)
        rule = rule if len(rule) <= 100 else rule[:100] + "…"
        raise ReplyNotMatchingSchema(
            f"the reply does not match the schema at ${where}: fails {error.validator!r} {rule}",
            status=completion.http_status,
            request_id=completion.request_id,
        )


def check_reply(completion: Completion, params: dict[str, Any]) -> None:
    """Raise a ReplyDefect when a finished reply is not a usable success."""
    check_tool_calls(completion)
    check_json_schema(completion, params)

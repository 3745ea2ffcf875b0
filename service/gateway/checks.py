"""Checks on an assembled reply that the gateway reported as finished.

A reply can end cleanly and still be unusable: ezrouter's GW-001 ends with
``finish_reason: "tool_calls"`` and no tool call at all, and a strict ``json_schema``
request can come back with text that does not match. Neither is stored as a success.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import jsonschema

from service.completion import Completion
from service.errors import GatewayToolCallsMissing, ReplyNotMatchingSchema
from service.gateway.routing import anthropic_problem, is_claude


def declared_tools(params: dict[str, Any]) -> frozenset[str]:
    """The function names the request offered: the only tool names an error may show."""
    names = set()
    for tool in params.get("tools") or []:
        name = (tool.get("function") or {}).get("name") if isinstance(tool, dict) else None
        if isinstance(name, str):
            names.add(name)
    return frozenset(names)


def tool_call_problem(
    tool_calls: list[dict[str, Any]] | None, declared: frozenset[str] = frozenset()
) -> str | None:
    """Why these tool calls cannot be executed by the caller, or None when they can.

    A call is named by its position, and by its function's name only when the request
    offered that name: a name the model made up is reply text, kept out of errors.
    """
    if not tool_calls:
        return "no tool call was sent"
    for i, call in enumerate(tool_calls):
        function = call.get("function") or {}
        if not call.get("id"):
            return f"tool call {i} has no id"
        name = function.get("name")
        if not name:
            return f"tool call {i} has no function name"
        shown = f"tool call {i} ({name})" if name in declared else f"tool call {i}"
        arguments = function.get("arguments") or "{}"
        try:
            parsed = json.loads(arguments)
        except ValueError as error:
            where = (
                f": {error.msg} at character {error.pos}"
                if isinstance(error, json.JSONDecodeError)
                else ""
            )
            return f"{shown} has arguments that are not JSON{where}"
        if not isinstance(parsed, dict):
            return f"{shown} has arguments that are not an object"
    return None


def gw001_advice(
    surface: str,
    requested: str | None,
    model: str | None,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
) -> str:
    """What a GW-001 error says after its problem: true for where the call went and why.

    ``surface`` answered; ``requested`` is the job's surface (None: not known, the
    generic advice). The anthropic surface is never advised to a job that ran there, nor
    without naming the field that keeps a request off it.
    """
    if surface == "anthropic":
        return "on the anthropic surface"
    if requested is None:
        return "ezrouter GW-001; use the anthropic surface or claude-opus-4-7 for tool calls"
    if requested != "openai" and model is not None and not is_claude(model):
        return (
            "ezrouter GW-001 on the openai surface, where auto keeps non-claude models; "
            "name the anthropic surface, or use claude-opus-4-7, for tool calls"
        )
    problem = anthropic_problem(messages, params)
    if requested == "openai":
        if problem is None:
            return (
                "ezrouter GW-001 on the openai surface, which this job is set to; use the "
                "anthropic surface or claude-opus-4-7 for tool calls"
            )
        path, reason = problem
        return (
            "ezrouter GW-001 on the openai surface, which this job is set to; the anthropic "
            f"surface cannot take this request ({path}: {reason}); use claude-opus-4-7 "
            "for tool calls"
        )
    if problem is not None:
        path, reason = problem
        return (
            f"ezrouter GW-001 on the openai surface, where {path} kept this job ({reason}); "
            "without it auto sends claude tool calls to the anthropic surface; or use "
            "claude-opus-4-7"
        )
    return "ezrouter GW-001; use the anthropic surface or claude-opus-4-7 for tool calls"


def check_tool_calls(
    completion: Completion,
    declared: frozenset[str] = frozenset(),
    advice: Callable[[], str] | None = None,
) -> None:
    """GW-001: a ``tool_calls`` finish needs tool calls the caller can run; ``advice``
    (``gw001_advice``, worked out only for an error) ends the error's message."""
    if completion.finish_reason != "tool_calls":
        return
    problem = tool_call_problem(completion.tool_calls, declared)
    if problem is not None:
        said = advice() if advice is not None else None
        if said is None:
            said = gw001_advice(completion.surface, None, None, [], {})
        raise GatewayToolCallsMissing(
            f'finish_reason "tool_calls" but {problem} ({said})',
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


def schema_keys(schema: Any) -> frozenset[str]:
    """Every property name a schema names (``properties``, ``required``, at any depth)."""
    found: set[str] = set()
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            for key, value in node.items():
                if key in ("properties", "required") and isinstance(value, dict | list):
                    # A dict's keys, a list's items: the names either way.
                    found.update(k for k in value if isinstance(k, str))
                stack.append(value)
    return frozenset(found)


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
        # Named by path and rule only: the reply's own values never reach logs or errors,
        # nor its keys, but those the schema names.
        named = schema_keys(schema)
        where = "".join(
            f"[{p}]" if isinstance(p, int) else f".{p}" if p in named else ".<key>"
            for p in error.absolute_path
        )
        rule = json.dumps(error.validator_value, ensure_ascii=False)
        rule = rule if len(rule) <= 100 else rule[:100] + "…"
        raise ReplyNotMatchingSchema(
            f"the reply does not match the schema at ${where}: fails {error.validator!r} {rule}",
            status=completion.http_status,
            request_id=completion.request_id,
        )


def check_reply(
    completion: Completion,
    params: dict[str, Any],
    *,
    requested: str | None = None,
    model: str | None = None,
    messages: list[dict[str, Any]] | None = None,
) -> None:
    """Raise a ReplyDefect when a finished reply is not a usable success.

    ``requested`` (the job's surface), ``model`` and ``messages`` let a GW-001 error say
    why the call went where it went; without them its advice is the generic one.
    """

    def advice() -> str:
        return gw001_advice(completion.surface, requested, model, messages or [], params)

    check_tool_calls(completion, declared_tools(params), advice)
    check_json_schema(completion, params)

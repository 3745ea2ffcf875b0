"""Request bodies: a size limit enforced while reading, and JSON parsed defensively.

The limit is applied by ASGI middleware before routing, so an oversized body is refused
(413) before it is parsed and before authentication costs a database query; at most the
limit is ever held in memory, whatever Content-Length says or omits.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import envelope_bytes
from service.errors import InvalidRequest

# Deeper JSON is refused: no request needs it, and recursive code downstream must not meet it.
MAX_JSON_DEPTH = 64


class BodyLimit:
    """Answer 413 to a request whose body exceeds ``max_bytes``, reading no further.

    Paths in ``streamed`` (file uploads) have a limit of their own and are not buffered:
    their body passes through as it arrives (the route spools it to disk), counted, and a
    413 is raised as soon as it passes that limit.
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, streamed: dict[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.streamed = streamed or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.streamed.get(scope["path"]) if scope["method"] == "POST" else None
        declared = dict(scope["headers"]).get(b"content-length")
        if (
            declared is not None
            and declared.isdigit()
            and int(declared) > (limit or self.max_bytes)
        ):
            await self._too_large(send, limit or self.max_bytes)
            return
        if limit is not None:
            await self.app(scope, _counted(receive, limit), send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(send, self.max_bytes)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send, limit: int) -> None:
        content = envelope_bytes("payload_too_large", _too_large_message(limit))
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(content)).encode()),
                    (b"connection", b"close"),
                    (b"x-should-retry", b"false"),  # as every 4xx (errors.error_response)
                ],
            }
        )
        await send({"type": "http.response.body", "body": content})


def _too_large_message(limit: int) -> str:
    return f"the request body is larger than {limit} bytes"


def _counted(receive: Receive, limit: int) -> Receive:
    """``receive``, raising a 413 once more than ``limit`` bytes have come."""
    size = 0

    async def counting() -> Message:
        nonlocal size
        message = await receive()
        size += len(message.get("body", b""))
        if size > limit:
            raise HTTPException(413, _too_large_message(limit), headers={"Connection": "close"})
        return message

    return counting


class _LongInteger:
    """Stands, while parsing, for an integer with more digits than Python converts; where
    it sits is told once the document is parsed (``seq``: its order in the text)."""

    __slots__ = ("seq",)

    def __init__(self, seq: int) -> None:
        self.seq = seq


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _check_depth(value: Any) -> None:
    """Refuse nesting deeper than MAX_JSON_DEPTH, naming where; iterative, so the check
    itself cannot exhaust the stack. (Text that is not valid Unicode, such as a lone
    surrogate, is refused by validation, for every producer alike.)"""
    stack: list[tuple[Any, str, int]] = [(value, "", 1)]
    while stack:
        item, path, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise InvalidRequest(path or "body", f"nests deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(item, dict):
            stack.extend(
                (child, f"{path}.{key}" if path else key, depth + 1) for key, child in item.items()
            )
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))


def _check_long_integers(value: Any, max_digits: int) -> None:
    """Refuse an integer Python would not convert, naming the first one's path."""
    found: list[tuple[int, str]] = []
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, _LongInteger):
            found.append((item.seq, path))
        elif isinstance(item, dict):
            stack.extend((child, f"{path}.{key}" if path else key) for key, child in item.items())
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(item))
    if found:
        _, path = min(found)
        raise InvalidRequest(path or "body", f"integer too long: more than {max_digits} digits")


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or InvalidRequest naming what is wrong (field ``body``)."""
    if not raw.strip():
        raise InvalidRequest("body", "is empty; send a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest("body", f"is not UTF-8 (byte {exc.start})") from None
    long_integers = 0
    max_digits = sys.get_int_max_str_digits()  # 0: no limit

    def parse_int(digits: str) -> int | _LongInteger:
        # Python refuses to convert more digits than its limit, with a message about its
        # internals: such a number is kept as a marker and refused below, naming its path.
        nonlocal long_integers
        if max_digits and len(digits) - digits.startswith("-") > max_digits:
            long_integers += 1
            return _LongInteger(long_integers)
        return int(digits)

    try:
        value = json.loads(text, parse_int=parse_int)
    except RecursionError:
        raise InvalidRequest("body", f"nests deeper than {MAX_JSON_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        raise InvalidRequest(
            "body", f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except ValueError as exc:  # what the JSON decoder refuses beyond its syntax errors
        raise InvalidRequest("body", f"is not valid JSON: {exc}") from None
    _check_depth(value)
    if not isinstance(value, dict):
        raise InvalidRequest("body", f"must be a JSON object, not {_json_type(value)}")
    if long_integers:
        _check_long_integers(value, max_digits)
    return value


async def json_object_body(request: Request) -> dict[str, Any]:
    """The request's body as a JSON object, parsed as ``parse_json_object`` does (after
    the caller is authenticated, when declared after ``Caller``)."""
    return parse_json_object(await request.body())


async def empty_body(request: Request) -> None:
    """A route that takes no body: nothing, or an empty JSON object; anything else is a
    422 naming the first unknown field (or ``body``)."""
    raw = await request.body()
    if not raw.strip():
        return
    unknown = sorted(parse_json_object(raw))
    if unknown:
        raise InvalidRequest(unknown[0], "is not a known field (this route takes no body)")


# A route's JSON object body, parsed by ezq rather than FastAPI (whose answers to a bad
# body are worded otherwise and, for some, a 400 outside the contract).
JsonObject = Annotated[dict[str, Any], Depends(json_object_body)]
NoBody = Annotated[None, Depends(empty_body)]
# What /openapi.json says of such bodies.
OBJECT_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"type": "object"}}},
}
NO_BODY = {
    "required": False,
    "content": {"application/json": {"schema": {"type": "object", "maxProperties": 0}}},
}

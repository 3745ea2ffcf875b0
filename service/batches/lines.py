"""Reading a batch file line by line, and checking each line as a single job is checked.

A line is OpenAI's batch request, ``{"custom_id", "method": "POST", "url":
"/v1/chat/completions", "body": {...a chat completion request...}}``. Its body goes through
``validate_request`` exactly like ``POST /v1/jobs``; errors name the line and the field
(``line 3: body.messages[0].role: ...``). Files are read from a stream, a line at a time,
never whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from service import constants as c
from service.errors import InvalidBatchFile, InvalidRequest
from service.validation import CompletionRequest, storable, validate_request

LINE_FIELDS = frozenset({"custom_id", "method", "url", "body"})
MAX_CUSTOM_ID_LENGTH = 512


@dataclass(frozen=True, slots=True)
class BatchLine:
    """A valid line: its number in the file, its ``custom_id`` and the request."""

    number: int
    custom_id: str
    request: CompletionRequest


def physical_lines(stream: IO[bytes], *, max_line_bytes: int) -> Iterator[tuple[int, bytes]]:
    """Non-blank lines with their 1-based numbers; a line longer than ``max_line_bytes``
    is yielded cut short (and then fails to parse), so no line is held whole beyond it."""
    number = 0
    while True:
        raw = stream.readline(max_line_bytes + 1)
        if not raw:
            return
        number += 1
        if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
            # Skip the rest of the overlong line; report it as one line.
            while True:
                rest = stream.readline(c.BATCH_CHUNK_BYTES)
                if not rest or rest.endswith(b"\n"):
                    break
            yield number, b""  # marker: too long
            continue
        if raw.strip():
            yield number, raw


def _body_field(field: str) -> str:
    """``validate_request``'s field names, as they are spelt in a line's body."""
    if field.startswith("params."):
        return "body." + field.removeprefix("params.")
    if field == "params":
        return "body"
    return "body." + field


def _text(value: object, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequest(field, "is required (a non-empty string)")
    return value


def check_line(
    number: int,
    raw: bytes,
    *,
    tenant: str | None,
    metadata: dict[str, Any] | None,
    max_request_bytes: int,
    max_line_bytes: int,
    priority: int | None = None,
) -> BatchLine:
    """The line as a request, or InvalidRequest naming the field (line number separate)."""
    if not raw:
        raise InvalidRequest("line", f"is longer than {max_line_bytes} bytes")
    try:
        # Decoded as UTF-8 first (a UTF-8 BOM, which editors write, is dropped): given
        # bytes, json guesses UTF-16 or UTF-32 from a BOM or NUL bytes, and its error then
        # names a codec the caller never chose.
        value = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise InvalidRequest(
            "line", f"is not UTF-8 text (byte {exc.start + 1} of the line cannot be decoded)"
        ) from None
    except RecursionError:
        raise InvalidRequest("line", "nests too deeply") from None
    except ValueError as exc:
        raise InvalidRequest("line", f"is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidRequest("line", f"must be a JSON object, not {type(value).__name__}")
    unknown = sorted(set(value) - LINE_FIELDS)
    if unknown:
        try:
            storable("line", unknown[0])
        except InvalidRequest:  # the name cannot even be shown: it is not Unicode text
            raise InvalidRequest(
                "line", "has a field name that is not valid Unicode text"
            ) from None
        raise InvalidRequest(unknown[0], "is not a known field")
    custom_id = _text(value.get("custom_id"), "custom_id")
    if len(custom_id) > MAX_CUSTOM_ID_LENGTH:
        raise InvalidRequest("custom_id", f"is longer than {MAX_CUSTOM_ID_LENGTH} characters")
    storable("custom_id", custom_id)  # NUL or a lone surrogate: Postgres cannot store it
    if value.get("method") != "POST":
        raise InvalidRequest("method", "must be POST")
    if value.get("url") != c.BATCH_ENDPOINT:
        raise InvalidRequest("url", f"must be {c.BATCH_ENDPOINT}")
    body = value.get("body")
    if not isinstance(body, dict):
        raise InvalidRequest("body", "must be a JSON object (a chat completion request)")
    params = {k: v for k, v in body.items() if k not in ("model", "messages")}
    try:
        request = validate_request(
            model=body.get("model"),
            messages=body.get("messages"),
            params=params or None,
            tenant=tenant,
            metadata=metadata,
            priority=priority,
            max_request_bytes=max_request_bytes,
        )
    except InvalidRequest as exc:
        raise InvalidRequest(_body_field(exc.field), exc.reason) from None
    return BatchLine(number, custom_id, request)


class LineChecker:
    """Checks lines in order, keeping the first errors and the custom ids seen (which must
    be unique in the file)."""

    def __init__(
        self,
        *,
        tenant: str | None,
        metadata: dict[str, Any] | None,
        max_request_bytes: int,
        max_lines: int,
        priority: int | None = None,
    ) -> None:
        self.tenant = tenant
        self.metadata = metadata
        self.priority = priority
        self.max_request_bytes = max_request_bytes
        # A line holds one request and its envelope: room for JSON's escapes.
        self.max_line_bytes = c.API_BODY_LIMIT_FACTOR * max_request_bytes
        self.max_lines = max_lines
        self.errors: list[dict[str, Any]] = []
        self.more_errors = False
        self.lines = 0
        self._seen: set[str] = set()

    def _error(self, number: int, field: str, message: str) -> None:
        if len(self.errors) < c.BATCH_MAX_ERRORS:
            self.errors.append(
                {"code": "invalid_request", "line": number, "param": field, "message": message}
            )
        else:
            self.more_errors = True

    def check(self, number: int, raw: bytes) -> BatchLine | None:
        """The line, or None after recording its error."""
        self.lines += 1
        if self.lines > self.max_lines:
            self._error(number, "file", f"holds more than {self.max_lines} requests")
            return None
        try:
            line = check_line(
                number,
                raw,
                tenant=self.tenant,
                metadata=self.metadata,
                max_request_bytes=self.max_request_bytes,
                max_line_bytes=self.max_line_bytes,
                priority=self.priority,
            )
        except InvalidRequest as exc:
            self._error(number, exc.field, exc.reason)
            return None
        if line.custom_id in self._seen:
            self._error(number, "custom_id", f"{line.custom_id!r} is used by an earlier line")
            return None
        self._seen.add(line.custom_id)
        return line

    def lines_of(self, stream: IO[bytes]) -> Iterator[BatchLine | None]:
        """Each non-blank line of ``stream``, checked (None: it was invalid)."""
        for number, raw in physical_lines(stream, max_line_bytes=self.max_line_bytes):
            yield self.check(number, raw)

    def finish(self) -> None:
        """Raise InvalidBatchFile if any line was invalid, or if there was none."""
        if not self.errors and self.lines == 0:
            self._error(1, "file", "holds no requests")
        if self.errors:
            raise InvalidBatchFile(self.errors, more=self.more_errors)


def checker_for(
    tenant: str | None, metadata: dict[str, Any] | None, priority: int | None = None
) -> LineChecker:
    """A checker with today's limits (EZQ_MAX_REQUEST_BYTES, EZQ_BATCH_MAX_LINES)."""
    from service.config import get_settings

    settings = get_settings()
    return LineChecker(
        tenant=tenant,
        metadata=metadata,
        max_request_bytes=settings.ezq_max_request_bytes,
        max_lines=settings.ezq_batch_max_lines,
        priority=priority,
    )

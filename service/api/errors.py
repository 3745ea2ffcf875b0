"""One error envelope for every failure: ``{"error": {"type", "message", "field"?}}``.

Handlers for ezq's errors, FastAPI's and Starlette's own (unknown route, wrong method,
bad query parameter) and an unreachable database all answer in this shape; no answer is
FastAPI's default ``{"detail": ...}``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from service.db.session import UNAVAILABLE, unavailable_because
from service.errors import (
    BatchAlreadyFinished,
    BatchNotFound,
    ConversationNotFound,
    FileNotFound,
    IdempotencyConflict,
    InvalidBatchFile,
    InvalidRequest,
    JobAlreadyFinished,
    JobNotFound,
    TenantForbidden,
)

log = logging.getLogger(__name__)

_STATUS_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


class ApiError(Exception):
    """An HTTP error raised inside the interface, answered in the envelope."""

    def __init__(
        self,
        status_code: int,
        kind: str,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status_code = status_code
        self.kind = kind
        self.message = message
        self.field = field
        self.headers = headers
        super().__init__(message)


def envelope_bytes(kind: str, message: str, **extra: Any) -> bytes:
    """The envelope as bytes. ASCII-escaped, so text echoed from a request (even a lone
    surrogate) can never make encoding the answer fail."""
    detail = {"type": kind, "message": message, **{k: v for k, v in extra.items() if v is not None}}
    return json.dumps({"error": detail}, ensure_ascii=True).encode()


def error_response(
    status_code: int,
    kind: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    """The envelope as an answer. Every 4xx says ``x-should-retry: false``: the same request
    gets the same answer, and the openai SDK otherwise retries a 409 twice before raising
    (a 503, the database unreachable, may be retried)."""
    if 400 <= status_code < 500:
        headers = {**(headers or {}), "x-should-retry": "false"}
    return Response(
        envelope_bytes(kind, message, **extra),
        status_code=status_code,
        headers=headers,
        media_type="application/json",
    )


def _field_of(loc: tuple[Any, ...]) -> str:
    if loc and loc[0] == "query" and len(loc) > 1:
        return str(loc[1])  # a repeatable parameter is named, not its n-th value
    parts = [str(p) for p in loc[1:]] if loc and loc[0] in ("path", "header") else []
    return ".".join(parts) or "request"


def _invalid_message(error: Any) -> tuple[str, str]:
    """The field and message of FastAPI's first validation error, worded as the routes
    that parse their own bodies word theirs (``body: is not valid JSON: ...``)."""
    loc = tuple(error.get("loc", ()))
    if loc[:1] == ("body",) and error.get("type") == "json_invalid":
        reason = (error.get("ctx") or {}).get("error", "malformed")
        return "body", f"body: is not valid JSON: {reason}"
    if loc == ("body",) and error.get("type") == "missing":
        return "body", "body: is empty; send a JSON object"
    field = _field_of(loc)
    return field, f"{field}: {error.get('msg')}"


def _allowed(request: Request) -> list[str]:
    """The methods ``/openapi.json`` documents for the request's path: those of the path
    spelled exactly so (``/v1/jobs/replay``), else of the templates it matches."""
    path = request.url.path
    paths: dict[str, dict[str, Any]] = request.app.openapi().get("paths", {})
    if path in paths:
        return sorted(method.upper() for method in paths[path])
    return sorted(
        {
            method.upper()
            for template, operations in paths.items()
            if compile_path(template)[0].match(path)
            for method in operations
        }
    )


def install_error_handlers(app: FastAPI) -> None:
    """Answer every failure of ``app`` in the envelope."""

    @app.exception_handler(ApiError)
    def _api(_: Request, exc: ApiError) -> Response:
        return error_response(
            exc.status_code, exc.kind, exc.message, field=exc.field, headers=exc.headers
        )

    @app.exception_handler(InvalidRequest)
    def _invalid(_: Request, exc: InvalidRequest) -> Response:
        return error_response(422, "invalid_request", str(exc), field=exc.field)

    @app.exception_handler(TenantForbidden)
    def _forbidden(_: Request, exc: TenantForbidden) -> Response:
        return error_response(403, "forbidden", str(exc), field="tenant")

    @app.exception_handler(ConversationNotFound)
    def _no_conversation(_: Request, exc: ConversationNotFound) -> Response:
        return error_response(404, "conversation_not_found", str(exc), field="conversation_id")

    @app.exception_handler(JobNotFound)
    def _no_job(_: Request, exc: JobNotFound) -> Response:
        return error_response(404, "job_not_found", str(exc))

    @app.exception_handler(JobAlreadyFinished)
    def _finished(_: Request, exc: JobAlreadyFinished) -> Response:
        return error_response(409, "job_already_finished", str(exc), status=exc.status)

    @app.exception_handler(BatchNotFound)
    def _no_batch(_: Request, exc: BatchNotFound) -> Response:
        return error_response(404, "batch_not_found", str(exc))

    @app.exception_handler(FileNotFound)
    def _no_file(_: Request, exc: FileNotFound) -> Response:
        return error_response(404, "file_not_found", str(exc))

    @app.exception_handler(BatchAlreadyFinished)
    def _batch_finished(_: Request, exc: BatchAlreadyFinished) -> Response:
        return error_response(409, "batch_already_finished", str(exc), status=exc.status)

    @app.exception_handler(InvalidBatchFile)
    def _bad_file(_: Request, exc: InvalidBatchFile) -> Response:
        return error_response(422, "invalid_file", str(exc), field="file", errors=exc.errors)

    @app.exception_handler(IdempotencyConflict)
    def _conflict(_: Request, exc: IdempotencyConflict) -> Response:
        return error_response(409, "idempotency_conflict", str(exc), job_id=str(exc.job_id))

    @app.exception_handler(RequestValidationError)
    def _request_invalid(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "is invalid"}
        field, message = _invalid_message(first)
        return error_response(422, "invalid_request", message, field=field)

    @app.exception_handler(StarletteHTTPException)
    def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if isinstance(exc.detail, dict) and "type" in exc.detail and "message" in exc.detail:
            # Raised by a route with its own type (and extra fields): kept as given.
            detail = {k: v for k, v in exc.detail.items() if k not in ("type", "message")}
            return error_response(
                exc.status_code,
                str(exc.detail["type"]),
                str(exc.detail["message"]),
                headers=dict(exc.headers or {}),
                **detail,
            )
        kind = _STATUS_TYPES.get(exc.status_code, "http_error")
        if exc.status_code == 404:
            message = f"no route {request.url.path}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
            # Starlette names the methods of one route; the path may have several.
            headers = {**(exc.headers or {}), "Allow": ", ".join(_allowed(request))}
            return error_response(405, kind, message, headers=headers)
        else:
            message = str(exc.detail)
        return error_response(exc.status_code, kind, message, headers=dict(exc.headers or {}))

    def _database_down(_: Request, exc: Exception) -> Response:
        log.warning("database unavailable: %s", unavailable_because(exc))
        return error_response(
            503, "unavailable", "the database is unavailable; try again shortly",
            headers={"Retry-After": "5"},
        )  # fmt: skip

    # Unreachable, or no pooled connection free within the pool's timeout.
    for unavailable in UNAVAILABLE:
        app.add_exception_handler(unavailable, _database_down)

    @app.exception_handler(Exception)
    def _bug(_: Request, exc: Exception) -> Response:
        # A bug: logged with its traceback (by the server), answered without it.
        return error_response(500, "internal_error", "ezq failed to answer; this is a bug")

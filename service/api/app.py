"""FastAPI application: POST a job, GET it (or its conversation) back.

The handlers are thin: they call the same producer functions as Python callers, so the
HTTP interface validates, stores and publishes exactly like ``enqueue_completion``.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Header, Request, Response, status
from fastapi.exceptions import HTTPException
from fastapi.responses import JSONResponse

from service.api import replay_routes
from service.api.auth import require_token
from service.config import get_settings
from service.errors import (
    ConversationNotFound,
    IdempotencyConflict,
    InvalidRequest,
    JobAlreadyFinished,
    JobNotFound,
)

JOB_FIELDS = (
    "model",
    "messages",
    "conversation_id",
    "params",
    "tenant",
    "metadata",
    "idempotency_key",
    "callback_url",
    "surface",
)


def _error(status_code: int, kind: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse(
        status_code=status_code, content={"error": {"type": kind, "message": message, **extra}}
    )


def _parse_uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise HTTPException(
            status_code=404, detail={"type": "not_found", "message": f"no {what} {value}"}
        ) from None


def create_app() -> FastAPI:
    """The application; settings are read here, so a bad variable fails at start-up."""
    settings = get_settings()
    settings.api_tokens(required=True)
    app = FastAPI(
        title="ezq",
        summary="LLM chat completions as background jobs",
        version="1",
        dependencies=[Depends(require_token)],
    )

    @app.exception_handler(InvalidRequest)
    def _invalid(_: Request, exc: InvalidRequest) -> JSONResponse:
        return _error(422, "invalid_request", str(exc), field=exc.field)

    @app.exception_handler(ConversationNotFound)
    def _no_conversation(_: Request, exc: ConversationNotFound) -> JSONResponse:
        return _error(404, "conversation_not_found", str(exc), field="conversation_id")

    @app.exception_handler(JobNotFound)
    def _no_job(_: Request, exc: JobNotFound) -> JSONResponse:
        return _error(404, "job_not_found", str(exc))

    @app.exception_handler(JobAlreadyFinished)
    def _finished(_: Request, exc: JobAlreadyFinished) -> JSONResponse:
        return _error(409, "job_already_finished", str(exc), status=exc.status)

    @app.exception_handler(IdempotencyConflict)
    def _conflict(_: Request, exc: IdempotencyConflict) -> JSONResponse:
        return _error(409, "idempotency_conflict", str(exc), job_id=str(exc.job_id))

    @app.exception_handler(HTTPException)
    def _http(_: Request, exc: HTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, dict) else {"message": str(exc.detail)}
        return JSONResponse(
            status_code=exc.status_code, content={"error": detail}, headers=exc.headers
        )

    @app.post("/v1/jobs", status_code=status.HTTP_202_ACCEPTED)
    def create_job(
        response: Response,
        payload: Annotated[Any, Body()],
        idempotency_key: Annotated[str | None, Header()] = None,
    ) -> dict[str, Any]:
        """Enqueue a chat completion; 202 with the job. Fields as in ``enqueue_completion``."""
        from service.producer import enqueue_completion, get_job

        if not isinstance(payload, dict):
            raise InvalidRequest("body", f"must be a JSON object, not {type(payload).__name__}")
        unknown = sorted(set(payload) - set(JOB_FIELDS))
        if unknown:
            raise InvalidRequest(unknown[0], "is not a known field")
        if idempotency_key is not None:
            payload = {**payload, "idempotency_key": idempotency_key}
        job_id = enqueue_completion(
            payload.get("model"),
            payload.get("messages"),
            **{k: payload.get(k) for k in JOB_FIELDS[2:]},
        )
        response.headers["Location"] = f"/v1/jobs/{job_id}"
        return get_job(job_id)

    app.include_router(replay_routes.router)  # before /v1/jobs/{id}: /v1/jobs/replay is a path

    @app.get("/v1/jobs/{job_id}")
    def read_job(job_id: str) -> dict[str, Any]:
        """The job: status, attempts, content, finish reason, usage, error, timestamps."""
        from service.producer import get_job

        return get_job(_parse_uuid(job_id, "job"))

    @app.post("/v1/jobs/{job_id}/cancel")
    def cancel_job(job_id: str) -> dict[str, Any]:
        """Cancel a job that has not ended; 409 if it already succeeded or failed."""
        from service.producer import cancel_job

        return cancel_job(_parse_uuid(job_id, "job"))

    @app.get("/v1/conversations/{conversation_id}")
    def read_conversation(conversation_id: str) -> dict[str, Any]:
        """The conversation's messages in order, and its jobs."""
        from service.producer import get_conversation

        return get_conversation(_parse_uuid(conversation_id, "conversation"))

    return app


def create_health_app() -> FastAPI:
    """Unauthenticated liveness/readiness, mounted beside the API."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        checks = {"database": _check_database(), "broker": _check_broker()}
        healthy = all(v == "ok" for v in checks.values())
        return JSONResponse(status_code=200 if healthy else 503, content=checks)

    @app.get("/metrics")
    def metrics() -> Response:
        """Prometheus metrics; unauthenticated like /healthz, for the scraper."""
        from service.metrics.exposition import render

        body, content_type = render()
        return Response(content=body, media_type=content_type)

    return app


def _check_database() -> str:
    from sqlalchemy import text

    from service.db.session import get_engine

    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # reported, not raised: this is a health check
        return f"error: {type(exc).__name__}"
    return "ok"


def _check_broker() -> str:
    import redis

    try:
        redis.Redis.from_url(get_settings().celery_broker_url, socket_timeout=2).ping()
    except Exception as exc:  # reported, not raised: this is a health check
        return f"error: {type(exc).__name__}"
    return "ok"


def create_server_app() -> FastAPI:
    """What ``ezq api`` serves: the authenticated API, plus ``/healthz`` without auth."""
    import logging

    from service.logsetup import install_redaction

    # uvicorn has configured its loggers by now; keep tokens out of what they print.
    names = ("uvicorn", "uvicorn.access", "uvicorn.error")
    install_redaction([logging.getLogger(name) for name in names])
    outer = create_health_app()
    outer.mount("/", create_app())
    return outer

"""FastAPI application: enqueue, list, read and cancel jobs, read conversations.

The handlers are thin: they call the same producer functions as Python callers, scoped to
the tenants of the caller's key, so the HTTP interface validates, stores and publishes
exactly like ``enqueue_completion``. Every failure answers in one envelope (see
``service.api.errors``); ``/openapi.json`` describes every body and status.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import FastAPI, Header, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline

from service import constants as c
from service.api import batch_routes, events_route, flow_routes, replay_routes
from service.api.auth import AdminCaller, Caller
from service.api.body import BodyLimit, parse_json_object
from service.api.errors import install_error_handlers
from service.api.listing import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    decode_cursor,
    encode_cursor,
    job_filter,
)
from service.api.schemas import (
    BatchCreate,
    ConversationView,
    ErrorEnvelope,
    Health,
    JobList,
    JobStatus,
    JobView,
)
from service.config import get_settings
from service.db.session import size_pools_for
from service.errors import ConversationNotFound, InvalidRequest, JobNotFound
from service.validation import ENQUEUE_FIELDS, EnqueueRequest, checked_tenant

_ERRORS = {
    401: "No valid API key (`unauthorized`).",
    403: "The key may not act for the tenant named (`forbidden`).",
    404: "Unknown, or another tenant's (answered alike).",
    409: "`idempotency_conflict` (the caller's own first `job_id`), `job_already_finished`"
    " or `batch_already_finished`.",
    413: "The body is larger than EZQ_API_MAX_BODY_BYTES (`payload_too_large`).",
    422: "Invalid input (`invalid_request`), with the `field` at fault; a bad batch file"
    " (`invalid_file`) with its first bad lines in `errors`.",
    503: "The database is unavailable (`unavailable`); retry later.",
}


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorEnvelope, "description": _ERRORS[code]} for code in codes}


def _uuid(value: str, missing: type[JobNotFound] | type[ConversationNotFound]) -> uuid.UUID:
    # A malformed id is answered like an unknown one.
    try:
        return uuid.UUID(value)
    except ValueError:
        raise missing(value) from None


def _enqueue(payload: dict[str, Any], created_by: str) -> dict[str, Any]:
    from service.producer import enqueue_completion, get_job

    job_id = enqueue_completion(
        payload.get("model"),  # type: ignore[arg-type]  # validated inside
        payload.get("messages"),  # type: ignore[arg-type]
        **{k: payload.get(k) for k in ENQUEUE_FIELDS[2:]},
        created_by=created_by,
    )
    return get_job(job_id)


_FASTAPI_422 = "#/components/schemas/HTTPValidationError"
MULTIPART_OVERHEAD_BYTES = 64 * 1024


def _not_nullable_in_query(parameter: dict[str, Any]) -> None:
    """An optional query parameter is left out, never sent as null: describe ``str | None``
    as the string it is on the wire, not ``anyOf [string, null]`` (a client could only
    send "null" or "false" as text, which the parameter then takes as that string)."""
    schema = parameter.get("schema", {})
    variants = schema.get("anyOf")
    if parameter.get("in") != "query" or not isinstance(variants, list):
        return
    kept = [v for v in variants if v != {"type": "null"}]
    if len(kept) == 1 and len(kept) < len(variants):
        del schema["anyOf"]
        schema.update(kept[0])


def _with_body_schema(app: FastAPI) -> None:
    """Publish ``EnqueueRequest`` (and the models it uses) as OpenAPI components, and drop
    FastAPI's ``{"detail": ...}`` 422 that it adds to routes that cannot answer it."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for operations in schema["paths"].values():
                for operation in operations.values():
                    for parameter in operation.get("parameters", []):
                        _not_nullable_in_query(parameter)
                    answer = operation["responses"].get("422", {})
                    if _FASTAPI_422 in str(answer):
                        del operation["responses"]["422"]
            body = EnqueueRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
            components.update(body.pop("$defs", {}))
            components["EnqueueRequest"] = body
            batch = BatchCreate.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(batch.pop("$defs", {}))
            components["BatchCreate"] = batch
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


def create_app() -> FastAPI:
    """The application; settings are read here, so a bad variable fails at start-up."""
    settings = get_settings()
    settings.api_tokens()
    app = FastAPIOffline(
        title="ezq",
        summary="LLM chat completions as background jobs",
        description=(
            "Every route under /v1 needs `Authorization: Bearer <key>`: an `ezq_…` key from"
            " `ezq keys create` (scoped to its tenants) or an EZQ_API_TOKENS token (admin)."
            ' Errors are always `{"error": {"type", "message", "field"?}}`.'
        ),
        version="1",
        # `/v1/jobs/` is an unknown route (404 in the envelope), not Starlette's empty 307
        # to a Location built from the Host header, answered before authentication.
        redirect_slashes=False,
    )
    install_error_handlers(app)
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.api_max_body_bytes,
        # Room for the multipart envelope around the file itself.
        streamed={"/v1/files": settings.ezq_batch_max_file_bytes + MULTIPART_OVERHEAD_BYTES},
    )
    _with_body_schema(app)

    @app.post(
        "/v1/jobs",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=None,
        responses={
            202: {
                "model": JobView,
                "description": "The job, queued (or the first job, for a repeated key).",
                "headers": {"Location": {"schema": {"type": "string"}}},
            },
            **_responses(401, 403, 404, 409, 413, 422, 503),
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/EnqueueRequest"}}
                },
            }
        },
    )
    async def create_job(
        request: Request,
        principal: Caller,
        idempotency_key: Annotated[
            str | None, Header(description="Same as the body's idempotency_key.")
        ] = None,
    ) -> JSONResponse:
        """Enqueue a chat completion: 202 with the job and its `Location`.

        With a one-tenant key `tenant` may be omitted; a tenant outside the key's is a 403.
        """
        payload = parse_json_object(await request.body())
        unknown = sorted(set(payload) - set(ENQUEUE_FIELDS))
        if unknown:
            raise InvalidRequest(unknown[0], "is not a known field")
        if idempotency_key is not None:
            if not idempotency_key.isascii():
                # Header bytes arrive as Latin-1: anything else would be stored garbled.
                raise InvalidRequest("Idempotency-Key", "must be ASCII text")
            body_key = payload.get("idempotency_key")
            if body_key is not None and body_key != idempotency_key:
                # Either key alone names a job: two that differ would make a new one silently.
                raise InvalidRequest(
                    "Idempotency-Key", "differs from the body's idempotency_key; send one"
                )
            payload["idempotency_key"] = idempotency_key
        payload["tenant"] = principal.tenant_for(checked_tenant(payload.get("tenant")))
        view = principal.job_as_seen(await run_in_threadpool(_enqueue, payload, principal.key_id))
        return JSONResponse(
            view, status_code=202, headers={"Location": f"/v1/jobs/{view['job_id']}"}
        )

    @app.get(
        "/v1/jobs",
        response_model=None,
        responses={200: {"model": JobList}, **_responses(401, 403, 422, 503)},
    )
    def list_jobs(
        request: Request,
        principal: Caller,
        status: Annotated[list[JobStatus] | None, Query(description="Repeatable.")] = None,
        tenant: Annotated[str | None, Query(description="One of the key's tenants.")] = None,
        model: str | None = None,
        since: Annotated[datetime | None, Query(description="Created at or after (UTC).")] = None,
        until: Annotated[datetime | None, Query(description="Created before (UTC).")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
        cursor: Annotated[str | None, Query(description="`next_cursor` of a page.")] = None,
    ) -> dict[str, Any]:
        """The key's jobs, newest first, a page at a time.

        Filters: `status`, `tenant`, `model`, `since`, `until`, and `metadata.KEY=VALUE`
        (any number; VALUE matches the string or the JSON number/boolean it spells).
        """
        from service.db.job_list import list_jobs as list_page
        from service.db.session import transaction
        from service.views import view_of

        flt = job_filter(
            principal,
            request.query_params,
            statuses=list(status or ()),
            tenant=tenant,
            model=model,
            since=since,
            until=until,
        )
        after = decode_cursor(cursor) if cursor is not None else None
        with transaction() as session:
            page = list_page(session, flt, limit=limit, after=after, present=view_of)
        return {
            "jobs": [principal.job_as_seen(view) for view in page.views],
            "next_cursor": encode_cursor(page.next_after) if page.next_after else None,
        }

    app.include_router(flow_routes.router, responses=_responses(401, 403, 404, 413, 422, 503))
    # Before /v1/jobs/{job_id}: /v1/jobs/replay is a path of its own.
    app.include_router(
        replay_routes.router, responses=_responses(401, 403, 404, 409, 413, 422, 503)
    )

    @app.get(
        "/v1/jobs/{job_id}",
        response_model=None,
        responses={200: {"model": JobView}, **_responses(401, 404, 422, 503)},
    )
    def read_job(job_id: str, principal: Caller) -> dict[str, Any]:
        """The job: status, attempts, content, finish reason, usage, error, timestamps."""
        from service.producer import get_job

        return principal.job_as_seen(get_job(_uuid(job_id, JobNotFound), tenants=principal.tenants))

    app.include_router(events_route.router, responses=_responses(401, 404, 422, 503))

    @app.post(
        "/v1/jobs/{job_id}/cancel",
        response_model=None,
        responses={200: {"model": JobView}, **_responses(401, 404, 409, 413, 422, 503)},
    )
    def cancel_job(job_id: str, principal: Caller) -> dict[str, Any]:
        """Cancel a job that has not ended; 409 if it already succeeded or failed."""
        from service.producer import cancel_job

        return principal.job_as_seen(
            cancel_job(_uuid(job_id, JobNotFound), tenants=principal.tenants)
        )

    @app.get(
        "/v1/conversations/{conversation_id}",
        response_model=None,
        responses={200: {"model": ConversationView}, **_responses(401, 404, 422, 503)},
    )
    def read_conversation(conversation_id: str, principal: Caller) -> dict[str, Any]:
        """The conversation's messages in order, and its jobs."""
        from service.producer import get_conversation

        return get_conversation(
            _uuid(conversation_id, ConversationNotFound), tenants=principal.tenants
        )

    app.include_router(batch_routes.router, responses=_responses(401, 403, 404, 409, 413, 422, 503))

    @app.get(
        "/healthz",
        response_model=None,
        responses={200: {"model": Health}, 503: {"model": Health, "description": "Not ready."}},
    )
    def healthz() -> Response:
        """Liveness and readiness, without a key: the database and the broker."""
        checks = {"database": _check_database(), "broker": _check_broker()}
        healthy = all(v == "ok" for v in checks.values())
        return JSONResponse(status_code=200 if healthy else 503, content=checks)

    @app.get("/metrics", include_in_schema=False)
    def metrics(_: AdminCaller) -> Response:
        """Prometheus metrics, for an admin key or an EZQ_API_TOKENS token (Prometheus's
        `authorization: credentials:`): the series name every tenant. 401 without a key,
        403 for a key bound to tenants."""
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
    settings = get_settings()
    try:
        if settings.broker_is_redis:
            import redis

            redis.Redis.from_url(settings.celery_broker_url, socket_timeout=2).ping()
        else:  # RabbitMQ: a connection opened (and closed), as the producer opens one
            from kombu.connection import Connection

            broker = Connection(settings.celery_broker_url, connect_timeout=2)  # type: ignore[no-untyped-call]
            with broker as conn:
                conn.ensure_connection(max_retries=0)  # one try: a probe waits 2 s at most
    except Exception as exc:  # reported, not raised: this is a health check
        return f"error: {type(exc).__name__}"
    return "ok"


def create_server_app() -> FastAPI:
    """What ``ezq api`` serves: the API, its offline docs, and ``/healthz`` without a key."""
    import logging

    from service.logsetup import install_redaction

    # uvicorn has configured its loggers by now; keep tokens out of what they print.
    names = ("uvicorn", "uvicorn.access", "uvicorn.error")
    install_redaction([logging.getLogger(name) for name in names])
    # The process's pools serve its request threads, not a worker's: an environment shared
    # with workers of a few threads (EZQ_WORKER_CONCURRENCY=4) left 40 request threads
    # waiting on 6 connections. Before the first engine is built (none is before this).
    size_pools_for(c.API_THREADS)
    return create_app()

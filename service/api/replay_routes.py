"""HTTP routes for replaying jobs: ``POST /v1/jobs/{id}/replay`` and ``POST /v1/jobs/replay``.

Included by ``service.api.app`` with one line; the app's authentication and error
handlers apply. Bodies are checked by hand, like ``POST /v1/jobs``, so that a bad field is
a ``422 invalid_request`` naming it.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from fastapi import APIRouter, HTTPException, Response, status

from service.api.auth import Caller
from service.api.body import NO_BODY, OBJECT_BODY, JsonObject, NoBody
from service.errors import InvalidRequest, JobNotReplayable
from service.validation import storable

router = APIRouter()

FILTER_FIELDS = (
    "job_ids",
    "status",
    "tenant",
    "model",
    "error_type",
    "since",
    "until",
    "metadata",
    "limit",
    "dry_run",
)
MAX_LIMIT = 100_000


def _strings(payload: dict[str, Any], name: str) -> tuple[str, ...]:
    """A string or a list of strings, as a tuple."""
    value = payload.get(name)
    if value is None:
        return ()
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise InvalidRequest(name, "must be a string or a list of strings")
    return tuple(values)


def _optional_text(payload: dict[str, Any], name: str) -> str | None:
    value = payload.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(name, "must be a string such as 7d or 2026-11-25")
    return value


def _metadata(payload: dict[str, Any]) -> list[str]:
    value = payload.get("metadata") or {}
    if not isinstance(value, dict):
        raise InvalidRequest("metadata", "must be an object of key: value")
    return [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in value.items()]


def _limit(payload: dict[str, Any]) -> int:
    value = payload.get("limit", 1000)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise InvalidRequest("limit", f"must be an integer from 1 to {MAX_LIMIT}")
    return value


def _job_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise HTTPException(
            status_code=404, detail={"type": "job_not_found", "message": f"no job {value}"}
        ) from None


@router.post(
    "/v1/jobs/replay",
    status_code=status.HTTP_202_ACCEPTED,
    openapi_extra={"requestBody": OBJECT_BODY},
)
def replay_many(response: Response, principal: Caller, payload: JsonObject) -> dict[str, Any]:
    """Replay the jobs that match every filter given (failed ones unless ``status`` says
    otherwise), or ``job_ids``; ``dry_run`` only counts them and estimates the cost."""
    from service.ops.filters import build_filter
    from service.ops.replay import replay_jobs

    if not isinstance(payload, dict):
        raise InvalidRequest("body", f"must be a JSON object, not {type(payload).__name__}")
    unknown = sorted(set(payload) - set(FILTER_FIELDS))
    if unknown:
        raise InvalidRequest(unknown[0], "is not a known field")
    for name, value in payload.items():
        storable(name, value)  # what Postgres cannot compare: NUL, lone surrogates, NaN
    dry_run = payload.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise InvalidRequest("dry_run", "must be true or false")
    ids = _strings(payload, "job_ids")
    statuses = _strings(payload, "status")
    tenants = _strings(payload, "tenant")
    for tenant in tenants:
        principal.check_filter(tenant)
    if principal.tenants is not None and not tenants:
        tenants = tuple(sorted(principal.tenants))  # a tenant key replays only its own
    fields = {k: v for k, v in payload.items() if k not in ("limit", "dry_run") and v}
    if not fields:
        raise InvalidRequest("body", "give job_ids or at least one filter")
    wanted = build_filter(
        statuses=statuses or (() if ids else ("failed",)),
        tenants=tenants,
        models=_strings(payload, "model"),
        error_types=_strings(payload, "error_type"),
        since=_optional_text(payload, "since"),
        until=_optional_text(payload, "until"),
        meta=_metadata(payload),
        ids=ids,
        names={
            "since": "since",
            "until": "until",
            "meta": "metadata",
            "ids": "job_ids",
            "status": "status",
        },
    )
    result = replay_jobs(
        wanted, limit=_limit(payload), dry_run=dry_run, created_by=principal.key_id
    )
    if dry_run:
        response.status_code = status.HTTP_200_OK
    return result.as_dict()


@router.post(
    "/v1/jobs/{job_id}/replay",
    status_code=status.HTTP_202_ACCEPTED,
    openapi_extra={"requestBody": NO_BODY},
)
def replay_one(job_id: str, response: Response, principal: Caller, _body: NoBody) -> dict[str, Any]:
    """Replay one ended job as a new job (``replay_of`` = this id); 202 with the new job.
    It takes no body (an empty JSON object at most)."""
    from service.ops.replay import replay_job
    from service.producer import get_job

    try:
        scope = tuple(sorted(principal.tenants)) if principal.tenants is not None else ()
        new_id = replay_job(_job_id(job_id), tenants=scope, created_by=principal.key_id)
    except JobNotReplayable as exc:
        raise HTTPException(
            status_code=409,
            detail={"type": "job_not_replayable", "message": str(exc), "reason": exc.reason},
        ) from None
    response.headers["Location"] = f"/v1/jobs/{new_id}"
    return principal.job_as_seen(get_job(new_id, tenants=principal.tenants))

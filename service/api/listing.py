"""``GET /v1/jobs``: the query string as a scoped filter, and opaque page cursors."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import UTC, datetime

from starlette.datastructures import QueryParams

from service.db.job_list import JobFilter
from service.errors import InvalidRequest
from service.keys.principal import Principal

METADATA_PREFIX = "metadata."
REPEATABLE_PARAMS = frozenset({"status"})
DEFAULT_LIMIT = 50
MAX_LIMIT = 200


def encode_cursor(after: tuple[datetime, uuid.UUID]) -> str:
    raw = json.dumps([after[0].isoformat(), str(after[1])], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        when, job_id = json.loads(raw)
        return datetime.fromisoformat(when), uuid.UUID(job_id)
    except (binascii.Error, ValueError, TypeError):
        raise InvalidRequest("cursor", "is not a cursor this API gave out") from None


def _is_iso(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def _utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def job_filter(
    principal: Principal,
    params: QueryParams,
    *,
    statuses: list[str] | None,
    tenant: str | None,
    model: str | None,
    since: datetime | None,
    until: datetime | None,
) -> JobFilter:
    """The filter for this caller: its tenants, and what the query string asks."""
    metadata = []
    for name, value in params.multi_items():
        if "\x00" in name or "\x00" in value:
            # Postgres text cannot hold NUL: refuse it here rather than fail in the query.
            raise InvalidRequest(name.replace("\x00", "\\x00"), "must not contain NUL characters")
        # Names the route does not take were refused before (``query_check``).
        if name.startswith(METADATA_PREFIX):
            metadata.append((name[len(METADATA_PREFIX) :], value))
        elif name not in REPEATABLE_PARAMS and len(params.getlist(name)) > 1:
            # Taking one of several values silently would filter on what was not meant.
            raise InvalidRequest(name, "may be given once")
    for name in ("since", "until"):
        raw = params.get(name)
        if raw is not None and not _is_iso(raw):
            # pydantic would also take a number of seconds; the contract says ISO 8601.
            raise InvalidRequest(name, "must be an ISO 8601 date or date and time")
    principal.check_filter(tenant)
    return JobFilter(
        tenants=principal.tenants,
        statuses=tuple(statuses or ()),
        tenant=tenant,
        model=model,
        since=_utc(since),
        until=_utc(until),
        metadata=tuple(metadata),
    )

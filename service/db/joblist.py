"""Selecting jobs by the operator's filters: listing, replay and status read these.

Callers own the transaction. Filters combine with AND; repeated values of one filter
with OR.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, true
from sqlalchemy.orm import Session

from service.db.metadata_match import by_key
from service.db.models import Job, TokenUsage


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Which jobs: every field narrows the selection; empty means "any"."""

    statuses: tuple[str, ...] = ()
    tenants: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    error_types: tuple[str, ...] = ()
    since: datetime | None = None  # created at or after
    until: datetime | None = None  # created before
    meta: tuple[tuple[str, str], ...] = ()  # (key, value as typed)
    job_ids: tuple[uuid.UUID, ...] = ()
    conversation_id: uuid.UUID | None = None

    def is_empty(self) -> bool:
        return self == JobFilter()


def _meta_condition(key: str, values: list[Any]) -> ColumnElement[bool]:
    # ``--meta n=1`` matches the number 1 and the string "1": people tag both ways.
    return or_(*(Job.meta.contains({key: value}) for value in values))


def conditions(wanted: JobFilter) -> ColumnElement[bool]:
    """The WHERE clause for ``wanted``."""
    parts: list[ColumnElement[bool]] = []
    if wanted.statuses:
        parts.append(Job.status.in_(wanted.statuses))
    if wanted.tenants:
        parts.append(Job.tenant.in_(wanted.tenants))
    if wanted.models:
        parts.append(Job.model.in_(wanted.models))
    if wanted.error_types:
        parts.append(Job.error_type.in_(wanted.error_types))
    if wanted.since is not None:
        parts.append(Job.created_at >= wanted.since)
    if wanted.until is not None:
        parts.append(Job.created_at < wanted.until)
    for key, values in by_key(wanted.meta).items():
        parts.append(_meta_condition(key, values))
    if wanted.job_ids:
        parts.append(Job.id.in_(wanted.job_ids))
    if wanted.conversation_id is not None:
        parts.append(Job.conversation_id == wanted.conversation_id)
    return and_(true(), *parts)


LIST_COLUMNS = (
    "job_id",
    "status",
    "model",
    "tenant",
    "attempts",
    "error_type",
    "error",
    "created_at",
    "finished_at",
    "conversation_id",
    "replay_of",
    "metadata",
    "total_tokens",
    "cost_usd",
)


def list_jobs(session: Session, wanted: JobFilter, *, limit: int) -> list[dict[str, Any]]:
    """Matching jobs, newest first, at most ``limit``; one dict per job (LIST_COLUMNS)."""
    stmt = (
        select(
            Job.id,
            Job.status,
            Job.model,
            Job.tenant,
            Job.attempts,
            Job.error_type,
            Job.error,
            Job.created_at,
            Job.finished_at,
            Job.conversation_id,
            Job.replay_of,
            Job.meta,
            TokenUsage.total_tokens,
            TokenUsage.cost_usd,
        )
        .outerjoin(TokenUsage, TokenUsage.job_id == Job.id)
        .where(conditions(wanted))
        .order_by(Job.created_at.desc(), Job.enqueue_seq.desc())
        .limit(limit)
    )
    rows = session.execute(stmt).all()
    return [dict(zip(LIST_COLUMNS, row, strict=True)) for row in rows]


def matching_jobs(session: Session, wanted: JobFilter, *, limit: int) -> list[Job]:
    """Matching jobs in enqueue order (oldest first), so conversation turns stay in order."""
    stmt = select(Job).where(conditions(wanted)).order_by(Job.enqueue_seq).limit(limit)
    return list(session.scalars(stmt))


def count_jobs(session: Session, wanted: JobFilter) -> int:
    stmt = select(func.count()).select_from(Job).where(conditions(wanted))
    return int(session.execute(stmt).scalar_one())

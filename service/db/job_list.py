"""Listing jobs: filtered, scoped to tenants, newest first, a page at a time.

Pages are keyset-paginated on ``(created_at, id)``: each page is an index range scan
(``ix_jobs_tenant_created_at`` for a tenant, ``ix_jobs_created_at`` otherwise,
``ix_jobs_metadata`` for tags), however deep the page, and rows written meanwhile never
shift a page.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, Text, and_, cast, literal, or_, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from service.db.metadata_match import by_key
from service.db.models import Job, Message, TokenUsage


@dataclass(frozen=True, slots=True)
class JobFilter:
    """What to list. ``tenants`` is the caller's scope (None: every tenant)."""

    tenants: frozenset[str] | None = None
    statuses: tuple[str, ...] = ()
    tenant: str | None = None
    model: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    # (key, value) pairs; a value matches the string, or the JSON scalar it spells.
    metadata: tuple[tuple[str, str], ...] = ()


Present = Callable[..., dict[str, Any]]
"""Makes a job's JSON view: ``present(job, content=, tool_calls=, thinking_blocks=,
reasoning_content=, usage=)``."""


@dataclass(frozen=True, slots=True)
class Page:
    views: list[dict[str, Any]]
    # (created_at, id) of the last job, when more jobs follow.
    next_after: tuple[datetime, uuid.UUID] | None


def _metadata_match(key: str, values: list[Any]) -> Any:
    # The containment (@>) that ix_jobs_metadata (GIN) serves, the document cast from text.
    return or_(
        *(
            Job.meta.contains(cast(literal(json.dumps({key: candidate}), Text()), JSONB))
            for candidate in values
        )
    )


def page_statement(
    flt: JobFilter, *, limit: int, after: tuple[datetime, uuid.UUID] | None = None
) -> Select[Any]:
    """The query for one page: ``limit`` + 1 jobs, to tell whether another page follows."""
    stmt = select(Job)
    if flt.tenants is not None:
        stmt = stmt.where(Job.tenant.in_(sorted(flt.tenants)))
    if flt.tenant is not None:
        stmt = stmt.where(Job.tenant == flt.tenant)
    if flt.statuses:
        stmt = stmt.where(Job.status.in_(flt.statuses))
    if flt.model is not None:
        stmt = stmt.where(Job.model == flt.model)
    if flt.since is not None:
        stmt = stmt.where(Job.created_at >= flt.since)
    if flt.until is not None:
        stmt = stmt.where(Job.created_at < flt.until)
    for key, values in by_key(flt.metadata).items():
        stmt = stmt.where(_metadata_match(key, values))
    if after is not None:
        # The first condition is the index range; the second breaks ties within it.
        stmt = stmt.where(
            Job.created_at <= after[0],
            or_(Job.created_at < after[0], and_(Job.created_at == after[0], Job.id < after[1])),
        )
    return stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)


def list_jobs(
    session: Session,
    flt: JobFilter,
    *,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None = None,
    present: Present,
) -> Page:
    """One page of job views, newest first, starting after the ``after`` key; ``present``
    makes a job's view from its row, reply and usage (``service.views.view_of``)."""
    jobs: list[Job] = list(session.scalars(page_statement(flt, limit=limit, after=after)))
    more = len(jobs) > limit
    jobs = jobs[:limit]
    views = _views(session, jobs, present)
    last = jobs[-1] if jobs else None
    return Page(views, (last.created_at, last.id) if more and last is not None else None)


def _views(session: Session, jobs: Sequence[Job], present: Present) -> list[dict[str, Any]]:
    """The views of ``jobs`` with two more queries in all (replies, usage), not per job."""
    ids = [job.id for job in jobs]
    if not ids:
        return []
    replies = {
        row.job_id: row
        for row in session.execute(
            select(
                Message.job_id,
                Message.content,
                Message.tool_calls,
                Message.thinking_blocks,
                Message.reasoning_content,
            )
            .where(Message.job_id.in_(ids), Message.role == "assistant")
            .order_by(Message.job_id, Message.seq.desc())
            .distinct(Message.job_id)
        )
    }
    usage = {
        row.job_id: row
        for row in session.execute(
            select(
                TokenUsage.job_id,
                TokenUsage.prompt_tokens,
                TokenUsage.completion_tokens,
                TokenUsage.cached_tokens,
                TokenUsage.total_tokens,
            ).where(TokenUsage.job_id.in_(ids))
        )
    }
    views = []
    for job in jobs:
        reply = replies.get(job.id)
        counts = usage.get(job.id)
        views.append(
            present(
                job,
                content=reply.content if reply else None,
                tool_calls=reply.tool_calls if reply else None,
                thinking_blocks=reply.thinking_blocks if reply else None,
                reasoning_content=reply.reasoning_content if reply else None,
                usage=(
                    {
                        "prompt_tokens": counts.prompt_tokens,
                        "completion_tokens": counts.completion_tokens,
                        "cached_tokens": counts.cached_tokens,
                        "total_tokens": counts.total_tokens,
                    }
                    if counts
                    else None
                ),
            )
        )
    return views

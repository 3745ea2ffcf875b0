"""All SQL for batch files, batches and the jobs that are their lines. Callers own the
transaction.

A batch's lines are ordinary jobs (``jobs.batch_id``, ``jobs.custom_id``), so the worker,
retries, usage and SQL treat them like any other; a batch's counts are read from its
jobs, never kept twice.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Row, exists, func, insert, select, text, update
from sqlalchemy.orm import Session

from service.db.models import (
    TERMINAL_STATUSES,
    Batch,
    BatchFile,
    BatchFileChunk,
    Conversation,
    Job,
    TokenUsage,
)
from service.db.queries import Tenants, visible
from service.errors import InvalidRequest

# Ids as the API spells them; anything else is answered like an unknown id, unqueried.
_FILE_ID = re.compile(r"file-[0-9a-f]{32}")
_BATCH_ID = re.compile(r"batch_[0-9a-f]{32}")


def is_file_id(value: object) -> bool:
    return isinstance(value, str) and _FILE_ID.fullmatch(value) is not None


def is_batch_id(value: object) -> bool:
    return isinstance(value, str) and _BATCH_ID.fullmatch(value) is not None


# --- files ---------------------------------------------------------------------------


def insert_file(session: Session, **values: Any) -> BatchFile:
    row = BatchFile(**values)
    session.add(row)
    session.flush()
    return row


def insert_chunk(session: Session, file_id: str, seq: int, data: bytes) -> None:
    session.execute(insert(BatchFileChunk).values(file_id=file_id, seq=seq, data=data))


def get_file(session: Session, file_id: str, *, tenants: Tenants = None) -> BatchFile | None:
    """The file, or None if unknown or outside ``tenants``."""
    if not is_file_id(file_id):
        return None
    row = session.get(BatchFile, file_id)
    if row is None or not visible(row.tenant, tenants):
        return None
    return row


def read_chunk(session: Session, file_id: str, seq: int) -> bytes | None:
    """One slice of an input file's bytes, or None past its end."""
    return session.scalar(
        select(BatchFileChunk.data).where(
            BatchFileChunk.file_id == file_id, BatchFileChunk.seq == seq
        )
    )


def has_content(session: Session, file_id: str) -> bool:
    """Whether an input file still holds its bytes (``ezq purge`` deletes them)."""
    return bool(session.scalar(select(exists().where(BatchFileChunk.file_id == file_id))))


def lines_purged(session: Session, batch_id: str) -> bool:
    """Whether the batch has lines and ``ezq purge`` purged every one of them."""
    lines = select(Job.id).where(Job.batch_id == batch_id)
    unpurged = lines.where(Job.purged_at.is_(None))
    return bool(session.scalar(select(lines.exists() & ~unpurged.exists())))


def batch_of_result_file(session: Session, file_id: str) -> tuple[Batch, str] | None:
    """The batch whose output or error file this is, and which of the two."""
    row = session.execute(
        select(Batch).where((Batch.output_file_id == file_id) | (Batch.error_file_id == file_id))
    ).scalar_one_or_none()
    if row is None:
        return None
    return row, "output" if row.output_file_id == file_id else "error"


# --- batches -------------------------------------------------------------------------


def insert_batch(session: Session, **values: Any) -> Batch:
    row = Batch(**values)
    session.add(row)
    session.flush()
    return row


def get_batch(
    session: Session, batch_id: str, *, tenants: Tenants = None, lock: bool = False
) -> Batch | None:
    """The batch, or None if unknown or outside ``tenants``; ``lock`` takes its row lock."""
    if not is_batch_id(batch_id):
        return None
    row = session.get(Batch, batch_id, with_for_update=lock, populate_existing=lock)
    if row is None or not visible(row.tenant, tenants):
        return None
    return row


def list_batches(
    session: Session, *, tenants: Tenants, after: str | None, limit: int
) -> list[Batch]:
    """Batches newest first, after the batch ``after`` (OpenAI's cursor), at most ``limit``."""
    stmt = select(Batch).order_by(Batch.created_at.desc(), Batch.id.desc()).limit(limit)
    if tenants is not None:
        stmt = stmt.where(Batch.tenant.in_(list(tenants)))
    if after is not None:
        if not is_batch_id(after):
            raise InvalidRequest("after", "is not a batch id (the `last_id` of a page)")
        anchor = session.get(Batch, after)
        # Another tenant's batch is answered like an unknown id: its place is not told. A
        # cursor that names no batch is refused: the first page again would send a paging
        # client round in a loop.
        if anchor is None or not visible(anchor.tenant, tenants):
            raise InvalidRequest("after", f"no batch {after} to page after")
        stmt = stmt.where(
            func.row(Batch.created_at, Batch.id) < func.row(anchor.created_at, anchor.id)
        )
    return list(session.scalars(stmt))


def insert_lines(
    session: Session, conversations: Sequence[dict[str, Any]], jobs: Sequence[dict[str, Any]]
) -> None:
    """Write a slice of a batch's lines: one conversation and one queued job per line, in
    two statements."""
    session.execute(insert(Conversation), list(conversations))
    session.execute(insert(Job), list(jobs))


def line_counts(session: Session, batch_id: str) -> dict[str, int]:
    """How many of the batch's lines are in each job status."""
    rows = session.execute(
        select(Job.status, func.count()).where(Job.batch_id == batch_id).group_by(Job.status)
    )
    return {status: count for status, count in rows}


def line_usage(session: Session, batch_id: str) -> Any:
    """Token totals over the batch's usage rows (None when no line has usage yet)."""
    row = session.execute(
        select(
            func.count(TokenUsage.id).label("rows"),
            func.coalesce(func.sum(TokenUsage.prompt_tokens), 0).label("prompt_tokens"),
            func.coalesce(func.sum(TokenUsage.cached_tokens), 0).label("cached_tokens"),
            func.coalesce(func.sum(TokenUsage.completion_tokens), 0).label("completion_tokens"),
            func.coalesce(func.sum(TokenUsage.reasoning_tokens), 0).label("reasoning_tokens"),
            func.coalesce(func.sum(TokenUsage.total_tokens), 0).label("total_tokens"),
        )
        .join(Job, Job.id == TokenUsage.job_id)
        .where(Job.batch_id == batch_id)
    ).one()
    return row if row.rows else None


def _live_line(batch_id: Any) -> Any:
    return exists().where(Job.batch_id == batch_id, Job.status.not_in(TERMINAL_STATUSES))


def has_live_lines(session: Session, batch_id: str) -> bool:
    return bool(session.scalar(select(_live_line(batch_id))))


def take_ended_open_batches(
    session: Session, *, limit: int, batch_id: str | None = None
) -> list[Batch]:
    """Open batches (in progress or cancelling) none of whose lines is still to run (only
    ``batch_id``, if given), locked; another caller skips them."""
    stmt = (
        select(Batch)
        .where(Batch.status.in_(("in_progress", "cancelling")), ~_live_line(Batch.id))
        .order_by(Batch.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    if batch_id is not None:
        stmt = stmt.where(Batch.id == batch_id)
    return list(session.scalars(stmt))


def cancel_pending_lines(session: Session, batch_id: str) -> int:
    """End the batch's lines that have not started as ``cancelled``, as cancelling a
    queued job does; running lines go on and keep their outcome. Returns how many."""
    result = session.execute(
        update(Job)
        .where(Job.batch_id == batch_id, Job.status.in_(("queued", "retrying")))
        .values(
            status="cancelled",
            finished_at=func.now(),
            lease_expires_at=None,
            lease_holder=None,
            needs_publish=False,
        )
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# --- results -------------------------------------------------------------------------

_RESULT_ROWS = text(
    """
    SELECT j.id, j.enqueue_seq, j.custom_id, j.status, j.model, j.finish_reason,
           j.finished_at, j.error_type, j.error_status, j.error, j.attempts,
           m.content, m.tool_calls,
           u.prompt_tokens, u.completion_tokens, u.total_tokens, u.cached_tokens,
           u.reasoning_tokens,
           a.gateway_request_id
    FROM jobs j
    LEFT JOIN LATERAL (
        SELECT content, tool_calls FROM messages
        WHERE job_id = j.id AND role = 'assistant' ORDER BY seq DESC LIMIT 1
    ) m ON true
    LEFT JOIN token_usage u ON u.job_id = j.id
    LEFT JOIN LATERAL (
        SELECT gateway_request_id FROM job_attempts
        WHERE job_id = j.id ORDER BY attempt DESC LIMIT 1
    ) a ON true
    WHERE j.batch_id = :batch_id AND j.status = ANY(:statuses) AND j.enqueue_seq > :after
    ORDER BY j.enqueue_seq
    LIMIT :limit
    """
)


def result_rows(
    session: Session, batch_id: str, *, statuses: Iterable[str], after: int, limit: int
) -> list[Row[Any]]:
    """Ended lines of the batch in line order, with reply, usage and request id."""
    params = {"batch_id": batch_id, "statuses": list(statuses), "after": after, "limit": limit}
    return list(session.execute(_RESULT_ROWS, params))

"""All SQL for conversations, jobs, attempts and usage. Callers own the transaction."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Row, func, select, text, true, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.db import driver
from service.db.driver import DriverStatement
from service.db.models import (
    TERMINAL_STATUSES,
    Conversation,
    Job,
    JobAttempt,
    Message,
    TokenUsage,
)
from service.db.row_checks import on_row
from service.db.session import Executor
from service.errors import (
    ConversationNotFound,
    IdempotencyConflict,
    JobAlreadyFinished,
    JobIdConflict,
    JobNotFound,
)

# --- creating jobs -------------------------------------------------------------------


class CompletionRequest(Protocol):
    """What a job row is written from: a validated request (``service.validation``)."""

    @property
    def model(self) -> str: ...
    @property
    def messages(self) -> Sequence[dict[str, Any]]: ...
    @property
    def params(self) -> dict[str, Any]: ...
    @property
    def conversation_id(self) -> uuid.UUID | None: ...
    @property
    def tenant(self) -> str | None: ...
    @property
    def metadata(self) -> dict[str, Any]: ...
    @property
    def idempotency_key(self) -> str | None: ...
    @property
    def callback_url(self) -> str | None: ...
    @property
    def surface(self) -> str: ...
    @property
    def priority(self) -> int: ...

    def fingerprint(self) -> str: ...


def _existing_by_key(session: Session, tenant: str | None, key: str) -> Job | None:
    stmt = select(Job).where(
        func.coalesce(Job.tenant, "") == (tenant or ""), Job.idempotency_key == key
    )
    return session.scalars(stmt).first()


def _check_idempotent(job: Job, request: CompletionRequest) -> uuid.UUID:
    # The job was found under the request's own tenant, so naming it reveals nothing.
    if job.request_hash != request.fingerprint():
        raise IdempotencyConflict(request.idempotency_key or "", job.id)
    return job.id


def _check_same_job(job: Job, request: CompletionRequest) -> uuid.UUID:
    """A message naming an existing job must carry that job's request, tenant included."""
    # A next turn naming no tenant runs under its conversation's (the same conversation:
    # the fingerprint holds its id), so only a named tenant, or a new conversation's, counts.
    named = request.tenant is not None or request.conversation_id is None
    if job.request_hash != request.fingerprint() or (named and job.tenant != request.tenant):
        raise JobIdConflict(job.id)
    return job.id


Tenants = Collection[str] | None
"""The tenants a caller may see; None for every tenant (admins, Python, the CLI)."""


def visible(tenant: str | None, tenants: Tenants) -> bool:
    """Whether a row of ``tenant`` is visible to a caller scoped to ``tenants``."""
    return tenants is None or (tenant is not None and tenant in tenants)


def _effective_tenant(session: Session, request: CompletionRequest) -> str | None:
    if request.tenant is not None or request.conversation_id is None:
        return request.tenant
    return session.scalar(
        select(Conversation.tenant).where(Conversation.id == request.conversation_id)
    )


def _conversation_for(session: Session, request: CompletionRequest) -> tuple[uuid.UUID, str | None]:
    """The conversation the job joins (created if new), and the tenant the job runs under."""
    if request.conversation_id is None:
        conversation = Conversation(tenant=request.tenant, meta=request.metadata)
        session.add(conversation)
        session.flush()
        return conversation.id, request.tenant
    # Locking the conversation serialises enqueues of one conversation, so the order of
    # ``enqueue_seq`` is the order in which turns were committed.
    existing = session.get(Conversation, request.conversation_id, with_for_update=True)
    if existing is None:
        raise ConversationNotFound(request.conversation_id)
    if request.tenant is None:
        # A next turn that names no tenant continues under the conversation's own.
        return existing.id, existing.tenant
    # Another tenant's conversation is answered exactly like an unknown one.
    if existing.tenant != request.tenant:
        raise ConversationNotFound(request.conversation_id)
    return existing.id, request.tenant


# The common case in one statement: a first turn without an idempotency key. The job
# first, then its conversation from what the job insert returned: a job id that is taken
# (a redelivered foreign message, or a concurrent insert of the same id) writes nothing at
# all, so the statement is atomic by itself. The job's foreign key to its conversation is
# checked at the end of the statement, when both rows exist.
_CREATE_NEW_SQL = """
WITH job AS (
    INSERT INTO jobs (id, conversation_id, status, model, params, input_messages, tenant,
                      metadata, request_hash, callback_url, surface, created_by, priority)
    VALUES (:id, :conversation_id, 'queued', :model, :params, :input_messages, :tenant, :meta,
            :request_hash, :callback_url, :surface, :created_by, :priority)
    ON CONFLICT DO NOTHING
    RETURNING id, conversation_id
),
conversation AS (
    INSERT INTO conversations (id, tenant, metadata)
    SELECT job.conversation_id, :tenant, :meta FROM job
)
SELECT id FROM job
"""
# The statement's parameters that are JSON documents (also those of the first turn written
# by its claim's ranking, ``service.db.flow``).
FIRST_TURN_JSON = ("meta", "params", "input_messages")
_CREATE_NEW = DriverStatement.of(text(_CREATE_NEW_SQL), json=FIRST_TURN_JSON)


def first_turn_values(
    request: CompletionRequest, job_id: uuid.UUID | None, created_by: str | None = None
) -> dict[str, Any]:
    """The values a first turn is written with (``create_first_turn``, or its claim's
    ranking: ``service.db.flow.ranking``); a new id when ``job_id`` is None."""
    return {
        "id": job_id or uuid.uuid4(),
        "conversation_id": uuid.uuid4(),
        "model": request.model,
        "params": request.params,
        "input_messages": list(request.messages),
        "tenant": request.tenant,
        "meta": request.metadata,
        "request_hash": request.fingerprint(),
        "callback_url": request.callback_url,
        "surface": request.surface,
        "created_by": created_by,
        "priority": request.priority,
    }


def create_first_turn(
    executor: Executor,
    request: CompletionRequest,
    job_id: uuid.UUID | None = None,
    created_by: str | None = None,
) -> uuid.UUID | None:
    """Write a first turn in a new conversation, with its conversation, in one statement
    (atomic by itself, so it may run on an autocommit connection); None, with nothing
    written, when the job id is taken. For a request with no conversation and no
    idempotency key."""
    created = driver.rows(executor, _CREATE_NEW, first_turn_values(request, job_id, created_by))
    return created[0].id if created else None


def is_first_turn(request: CompletionRequest) -> bool:
    """Whether ``request`` is written by ``create_first_turn``: a new conversation's first
    turn without an idempotency key."""
    return request.conversation_id is None and request.idempotency_key is None


def id_taken(exc: IntegrityError) -> bool:
    """Whether ``exc`` is a job insert that found its id taken."""
    return getattr(getattr(exc.orig, "diag", None), "constraint_name", None) == "pk_jobs"


def create_job(
    session: Session,
    request: CompletionRequest,
    *,
    job_id: uuid.UUID | None = None,
    created_by: str | None = None,
) -> tuple[uuid.UUID, bool]:
    """Write a queued job; return its id and whether it is new.

    An idempotency key already used for the same request (keys are per tenant) returns the
    first job's id; used for a different request it raises IdempotencyConflict. A
    ``job_id`` already present with the same request (a redelivered foreign message)
    returns that job; with a different one it raises JobIdConflict. A conversation of
    another tenant raises ConversationNotFound, as an unknown one does. ``created_by``
    records the API key that asked.
    """
    if is_first_turn(request):
        created = create_first_turn(session, request, job_id, created_by)
        if created is not None:
            return created, True
    if job_id is not None:
        existing = session.get(Job, job_id)
        if existing is not None:
            return _check_same_job(existing, request), False
    # Keys are per tenant: the tenant the job will run under, inherited from its
    # conversation when the request names none.
    tenant = _effective_tenant(session, request)
    if request.idempotency_key is not None:
        found = _existing_by_key(session, tenant, request.idempotency_key)
        if found is not None:
            return _check_idempotent(found, request), False
    # A savepoint, so a lost race undoes only this attempt, not the caller's transaction.
    savepoint = session.begin_nested()
    conversation_id, tenant = _conversation_for(session, request)
    values: dict[str, Any] = {
        "id": job_id or uuid.uuid4(),
        "conversation_id": conversation_id,
        "status": "queued",
        "model": request.model,
        "params": request.params,
        "input_messages": list(request.messages),
        "tenant": tenant,
        "meta": request.metadata,
        "idempotency_key": request.idempotency_key,
        "request_hash": request.fingerprint(),
        "callback_url": request.callback_url,
        "surface": request.surface,
        "created_by": created_by,
        "priority": request.priority,
    }
    stmt = insert(Job).values(**values).on_conflict_do_nothing().returning(Job.id)
    new_id = session.execute(stmt).scalar_one_or_none()
    if new_id is not None:
        savepoint.commit()
        return new_id, True
    # Lost a race with a concurrent insert of the same key or id.
    savepoint.rollback()
    if request.idempotency_key is not None:
        found = _existing_by_key(session, tenant, request.idempotency_key)
        if found is not None:
            return _check_idempotent(found, request), False
    if job_id is not None:
        raced = session.get(Job, job_id, populate_existing=True)
        if raced is not None:
            return _check_same_job(raced, request), False
    raise RuntimeError("job insert conflicted but no conflicting job was found")


# --- claiming and running ------------------------------------------------------------


# A job found by id, or a conversation's turns read in order, their state checked on each
# row (``row_checks``): with statistics taken when nothing waited, a state checked in the
# WHERE made the plan read every pending job through a pending jobs' index.
_PENDING_ON_ROW = text(on_row("jobs.status IN ('queued', 'retrying')"))
_QUEUED_ON_ROW = text(on_row("jobs.status = 'queued'"))


def park(session: Session, job_id: uuid.UUID) -> None:
    """Leave a pending job to the sweep: no message for it is on the broker any more."""
    session.execute(update(Job).where(Job.id == job_id, _PENDING_ON_ROW).values(needs_publish=True))


@dataclass(frozen=True, slots=True)
class TakenOver:
    """A running job whose holder is gone: it is pending again, or failed if that was its
    last attempt."""

    job: Job
    failed: bool


LOST_REASONS = {
    "worker_lost": "the worker running this attempt stopped before it finished",
    "lease_expired": (
        "the attempt's lease expired while its worker was alive (it could not record the"
        " outcome in time)"
    ),
}


def take_over(
    session: Session, job_id: uuid.UUID, *, error_type: str, max_attempts: int
) -> TakenOver | None:
    """End the lost attempt of a running job and make the job pending again (or failed).

    A job that failed this way gets its webhook from the caller (the outbox is above us)."""
    locked = _lock_job(session, job_id)
    if locked is None:
        return None
    job, now = locked
    if job.status != "running":
        return None
    reason = LOST_REASONS[error_type]
    _end_open_attempt(session, job, now, error_type=error_type, error=reason, retryable=True)
    job.lease_expires_at = None
    job.lease_holder = None
    job.error_type, job.error_status, job.error = error_type, None, reason
    if job.attempts >= max_attempts:
        job.status = "failed"
        job.finished_at = now
        return TakenOver(job, failed=True)
    job.status = "retrying"
    job.dispatched_at = now
    job.needs_publish = False
    return TakenOver(job, failed=False)


def _lock_job(session: Session, job_id: uuid.UUID) -> tuple[Job, datetime] | None:
    """The job, locked for update, and the database's clock, in one round trip."""
    row = session.execute(
        select(Job, func.now()).where(Job.id == job_id).with_for_update(of=Job)
    ).first()
    return (row[0], row[1]) if row is not None else None


def _end_open_attempt(session: Session, job: Job, now: datetime, **values: Any) -> None:
    """End the job's current attempt, if it is still open (its call has not reported)."""
    session.execute(
        update(JobAttempt)
        .where(
            JobAttempt.job_id == job.id,
            JobAttempt.attempt == job.attempts,
            JobAttempt.finished_at.is_(None),
        )
        .values(finished_at=now, **values)
    )


def cancel_job(session: Session, job_id: uuid.UUID, *, tenants: Tenants = None) -> Job:
    """End a job that has not ended yet as ``cancelled``; cancelling twice is a no-op.

    A queued or retrying job never runs. A running attempt cannot be interrupted, but it no
    longer owns the job, so its reply is discarded when it arrives. A job outside
    ``tenants`` raises JobNotFound, like an unknown one. The caller writes the webhook.
    """
    locked = _lock_job(session, job_id)
    if locked is None or not visible(locked[0].tenant, tenants):
        raise JobNotFound(job_id)
    job, now = locked
    if job.status == "cancelled":
        return job
    if job.status in TERMINAL_STATUSES:
        raise JobAlreadyFinished(job.id, job.status)
    if job.status == "running":
        _end_open_attempt(session, job, now, error_type="cancelled", error="the job was cancelled")
    job.status = "cancelled"
    job.finished_at = now
    job.lease_expires_at = None
    job.lease_holder = None
    return job


# --- reading -------------------------------------------------------------------------


def visible_job(session: Session, job_id: uuid.UUID, *, tenants: Tenants = None) -> Job:
    """The job; outside ``tenants`` it raises JobNotFound, exactly like an unknown id."""
    job = session.get(Job, job_id)
    if job is None or not visible(job.tenant, tenants):
        raise JobNotFound(job_id)
    return job


@dataclass(frozen=True, slots=True)
class JobRead:
    """A job with its reply (the last assistant message, if any) and its usage counts,
    read by one statement: one snapshot, so a reply or usage committed between two reads
    never shows beside the row as it was before (a ``running`` job with content)."""

    job: Job
    reply: Row[Any] | None  # content, tool_calls, thinking_blocks, reasoning_content
    usage: dict[str, int] | None


_REPLY = (
    select(
        Message.seq,
        Message.content,
        Message.tool_calls,
        Message.thinking_blocks,
        Message.reasoning_content,
    )
    .where(Message.job_id == Job.id, Message.role == "assistant")
    .order_by(Message.seq.desc())
    .limit(1)
    .lateral("reply")
)
_USAGE_COUNTS = ("prompt_tokens", "completion_tokens", "cached_tokens", "total_tokens")


def read_job(session: Session, job_id: uuid.UUID, *, tenants: Tenants = None) -> JobRead:
    """The job, its reply and its usage in one statement; outside ``tenants`` it raises
    JobNotFound, exactly like an unknown id."""
    row = session.execute(
        select(
            Job,
            _REPLY.c.seq.label("reply_seq"),
            _REPLY.c.content,
            _REPLY.c.tool_calls,
            _REPLY.c.thinking_blocks,
            _REPLY.c.reasoning_content,
            TokenUsage.id.label("usage_id"),
            *(getattr(TokenUsage, name) for name in _USAGE_COUNTS),
        )
        .select_from(Job)
        .outerjoin(_REPLY, true())
        .outerjoin(TokenUsage, TokenUsage.job_id == Job.id)
        .where(Job.id == job_id)
        # The row as this statement read it, even if the session holds the job already.
        .execution_options(populate_existing=True)
    ).first()
    if row is None or not visible(row.Job.tenant, tenants):
        raise JobNotFound(job_id)
    reply = row if row.reply_seq is not None else None
    usage = {name: getattr(row, name) for name in _USAGE_COUNTS} if row.usage_id else None
    return JobRead(row.Job, reply, usage)


def visible_conversation(
    session: Session, conversation_id: uuid.UUID, *, tenants: Tenants = None
) -> tuple[Conversation, Sequence[Message], Sequence[tuple[uuid.UUID, str]]]:
    """The conversation, its messages in order and its jobs' (id, status) in enqueue
    order; outside ``tenants`` it raises ConversationNotFound, like an unknown id."""
    conversation = session.get(Conversation, conversation_id)
    if conversation is None or not visible(conversation.tenant, tenants):
        raise ConversationNotFound(conversation_id)
    messages = session.scalars(
        select(Message).where(Message.conversation_id == conversation_id).order_by(Message.seq)
    ).all()
    jobs = session.execute(
        select(Job.id, Job.status)
        .where(Job.conversation_id == conversation_id)
        .order_by(Job.enqueue_seq)
    ).all()
    return conversation, messages, [(job_id, status) for job_id, status in jobs]


def next_waiting_job(session: Session, conversation_id: uuid.UUID) -> uuid.UUID | None:
    """The earliest queued turn of the conversation, marked as published, if any.

    The caller publishes it after the commit; a turn parked while it waited is then no
    longer the sweep's to publish.
    """
    earliest = (
        select(Job.id)
        .where(Job.conversation_id == conversation_id, _QUEUED_ON_ROW)
        .order_by(Job.enqueue_seq)
        .limit(1)
        .scalar_subquery()
    )
    return session.execute(
        update(Job)
        .where(Job.id == earliest)
        .values(needs_publish=False, dispatched_at=func.now())
        .returning(Job.id)
    ).scalar_one_or_none()


# The stored history's content parts the Anthropic surface may refuse, with each one's
# message index in the history (as the worker sends it: by seq, history first) and only
# the start of its URL or file data: enough for the data URL's media type, never the data.
_HISTORY_MEDIA_PARTS = text(
    """
    SELECT m.i, p.j - 1, p.part->>'type',
           left(p.part->'file'->>'file_data', 1024), left(p.part->'image_url'->>'url', 1024)
      FROM (SELECT row_number() OVER (ORDER BY seq) - 1 AS i,
                   CASE WHEN jsonb_typeof(content_parts) = 'array' THEN content_parts END
                       AS parts
              FROM messages WHERE conversation_id = :conversation_id) AS m
     CROSS JOIN LATERAL jsonb_array_elements(m.parts) WITH ORDINALITY AS p(part, j)
     WHERE p.part->>'type' IN ('input_audio', 'file', 'image_url')
     ORDER BY m.i, p.j
    """
)


MediaPart = tuple[int, int, str, str | None, str | None]


def history_media_parts(session: Session, conversation_id: uuid.UUID) -> list[MediaPart]:
    """The conversation's stored audio, file and image parts, in history order, each as
    (message index, part index, type, the first 1,024 characters of its file data, of its
    image URL): enough to read a data URL's media type, never the data."""
    rows = session.execute(_HISTORY_MEDIA_PARTS, {"conversation_id": conversation_id})
    return [(i, j, kind, data, url) for i, j, kind, data, url in rows]

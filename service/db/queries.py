"""All SQL for conversations, jobs, attempts and usage. Callers own the transaction."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from service import constants as c
from service.completion import Completion
from service.db.models import (
    TERMINAL_STATUSES,
    Conversation,
    Job,
    JobAttempt,
    Message,
    TokenUsage,
)
from service.errors import (
    ConversationNotFound,
    GatewayError,
    IdempotencyConflict,
    JobAlreadyFinished,
    JobIdConflict,
    JobNotFound,
)
from service.tokens import TokenCounts
from service.usage.costs import insert_priced_usage
from service.validation import CompletionRequest
from service.webhooks import outbox as webhook_outbox

# --- creating jobs -------------------------------------------------------------------


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


@dataclass(frozen=True, slots=True)
class Claimed:
    """The job is ours for this attempt; here is everything the gateway call needs."""

    job_id: uuid.UUID
    conversation_id: uuid.UUID
    attempt: int
    model: str
    params: dict[str, Any]
    messages: list[dict[str, Any]]
    tenant: str | None
    surface: str = "auto"


@dataclass(frozen=True, slots=True)
class AlreadyFinished:
    job_id: uuid.UUID
    status: str


@dataclass(frozen=True, slots=True)
class Busy:
    """Another worker holds a live lease on this job."""

    job_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class NotYetDue:
    """A retry whose backoff has not passed; ``due_in_s`` is how long is left."""

    job_id: uuid.UUID
    due_in_s: float


@dataclass(frozen=True, slots=True)
class WaitForTurn:
    """An earlier turn of the conversation has not finished yet."""

    job_id: uuid.UUID
    blocking_job_id: uuid.UUID


ClaimOutcome = Claimed | AlreadyFinished | Busy | NotYetDue | WaitForTurn


def _content_columns(content: Any) -> dict[str, Any]:
    """The ``content`` and ``content_parts`` columns for a string or an array of parts."""
    if not isinstance(content, list):
        return {"content": content, "content_parts": None}
    texts = [p["text"] for p in content if isinstance(p, dict) and p.get("type") == "text"]
    return {"content": "\n".join(texts) if texts else None, "content_parts": content}


def _history(session: Session, conversation_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = session.execute(
        select(
            Message.role,
            func.coalesce(Message.content_parts, func.to_jsonb(Message.content)),
            Message.name,
            Message.tool_calls,
            Message.tool_call_id,
            Message.thinking_blocks,
        )
        .where(Message.conversation_id == conversation_id)
        .order_by(Message.seq)
    ).all()
    history = []
    for role, content, name, tool_calls, tool_call_id, thinking_blocks in rows:
        message: dict[str, Any] = {"role": role, "content": content}
        if thinking_blocks is not None:
            message["thinking_blocks"] = thinking_blocks
        if name is not None:
            message["name"] = name
        if tool_calls is not None:
            message["tool_calls"] = tool_calls
        if tool_call_id is not None:
            message["tool_call_id"] = tool_call_id
        history.append(message)
    return history


def claim_job(
    session: Session,
    job_id: uuid.UUID,
    *,
    lease_seconds: float,
    holder: str | None = None,
) -> ClaimOutcome:
    """Take the job for one attempt, if it is its turn and nobody holds it.

    A running job is never taken over here, whatever its lease says: only the sweep
    decides that a holder is gone (``take_over``), because it alone knows whether the
    database has been reachable long enough for a live holder to have renewed its lease.
    A turn that must wait is parked (``needs_publish``): the turn before it publishes it
    when it ends, or the sweep does.
    """
    locked = _lock_job(session, job_id)
    if locked is None:
        raise JobNotFound(job_id)
    job, now = locked
    if job.status in TERMINAL_STATUSES:
        return AlreadyFinished(job.id, job.status)
    if job.status == "running":
        return Busy(job.id)
    if job.status == "retrying" and job.dispatched_at > now:
        # An extra message (a duplicate, a wake-up, the sweep) must not skip the backoff.
        return NotYetDue(job.id, (job.dispatched_at - now).total_seconds())
    # One turn at a time per conversation: lock the conversation row so that two workers
    # claiming two turns decide one after the other.
    session.execute(
        select(Conversation.id).where(Conversation.id == job.conversation_id).with_for_update()
    )
    blocker = session.execute(
        select(Job.id)
        .where(
            Job.conversation_id == job.conversation_id,
            Job.id != job.id,
            Job.status.not_in(TERMINAL_STATUSES),
            (Job.enqueue_seq < job.enqueue_seq) | (Job.status == "running"),
        )
        .order_by(Job.enqueue_seq)
        .limit(1)
    ).scalar_one_or_none()
    if blocker is not None:
        job.needs_publish = True
        return WaitForTurn(job.id, blocker)
    job.attempts += 1
    job.status = "running"
    job.started_at = job.started_at or now
    job.lease_expires_at = now + timedelta(seconds=lease_seconds)
    job.lease_holder = holder
    job.needs_publish = False
    session.add(JobAttempt(job_id=job.id, attempt=job.attempts, started_at=now))
    messages = _history(session, job.conversation_id) + list(job.input_messages)
    return Claimed(
        job_id=job.id,
        conversation_id=job.conversation_id,
        attempt=job.attempts,
        model=job.model,
        params=dict(job.params),
        messages=messages,
        tenant=job.tenant,
        surface=job.surface,
    )


def park(session: Session, job_id: uuid.UUID) -> None:
    """Leave a pending job to the sweep: no message for it is on the broker any more."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(("queued", "retrying")))
        .values(needs_publish=True)
    )


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
    """End the lost attempt of a running job and make the job pending again (or failed)."""
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
        _add_webhook(session, job)
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


def _owned(session: Session, job_id: uuid.UUID, attempt: int) -> tuple[Job, datetime] | None:
    """The job, locked, and the clock, if this attempt still owns it; else None."""
    locked = _lock_job(session, job_id)
    if locked is None:
        return None
    job, now = locked
    if job.status != "running" or job.attempts != attempt:
        return None
    return job, now


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


def _finish_attempt(
    session: Session, job_id: uuid.UUID, attempt: int, values: dict[str, Any]
) -> None:
    session.execute(
        update(JobAttempt)
        .where(JobAttempt.job_id == job_id, JobAttempt.attempt == attempt)
        .values(finished_at=func.now(), **values)
    )


def _add_webhook(session: Session, job: Job, view: dict[str, Any] | None = None) -> None:
    # The outbox: the event is written in the transaction that ends the job, so a worker
    # that dies after this commit cannot lose it (the sweep publishes it).
    if job.callback_url is not None:
        webhook_outbox.add_for_job(session, job, view or job_view(session, job.id))


@dataclass(frozen=True, slots=True)
class Recorded:
    """A job that has just succeeded, and its JSON view (as ``job_view`` would read it)."""

    job: Job
    view: dict[str, Any]
    cost_usd: Decimal | None = None  # as written to token_usage (None: unpriced or no usage)


def record_success(
    session: Session,
    claimed: Claimed,
    completion: Completion,
    tokens: TokenCounts | None,
) -> Recorded | None:
    """Store the reply, the history and the usage; None if this attempt lost the job.

    The job's own messages join the history together with its reply, so a failed turn
    leaves the history untouched and concurrent turns never interleave.
    """
    owned = _owned(session, claimed.job_id, claimed.attempt)
    if owned is None:
        _record_cancelled_spend(session, claimed, completion, tokens)
        return None
    job, now = owned
    next_seq = session.execute(
        select(func.coalesce(func.max(Message.seq), 0)).where(
            Message.conversation_id == job.conversation_id
        )
    ).scalar_one()
    new_messages = [*job.input_messages, completion.reply_message()]
    session.execute(
        insert(Message),
        [
            {
                "conversation_id": job.conversation_id,
                "seq": next_seq + i + 1,
                "role": m["role"],
                **_content_columns(m.get("content")),
                "name": m.get("name"),
                "tool_calls": m.get("tool_calls"),
                "tool_call_id": m.get("tool_call_id"),
                "thinking_blocks": m.get("thinking_blocks"),
                "job_id": job.id,
            }
            for i, m in enumerate(new_messages)
        ],
    )
    cost = _insert_usage(session, job, completion, tokens, job_cancelled=False)
    job.status = "succeeded"
    job.finish_reason = completion.finish_reason
    job.first_token_at = completion.first_token_at
    job.finished_at = now
    job.lease_expires_at = None
    job.lease_holder = None
    job.error_type = job.error_status = job.error = None
    _finish_attempt(session, job.id, claimed.attempt, _call_outcome(completion))
    # Built from what was just written rather than read back: two queries fewer.
    usage = tokens.summary() if tokens is not None and completion.usage is not None else None
    view = view_of(
        job,
        content=completion.content,
        tool_calls=completion.tool_calls,
        usage=usage,
        thinking_blocks=completion.thinking_blocks,
    )
    _add_webhook(session, job, view)
    return Recorded(job, view, cost)


def _call_outcome(completion: Completion) -> dict[str, Any]:
    """What a finished call records on its attempt row."""
    return {
        "http_status": completion.http_status,
        "first_token_at": completion.first_token_at,
        "gateway_request_id": completion.request_id,
        "surface": completion.surface,
    }


def _insert_usage(
    session: Session,
    job: Job,
    completion: Completion,
    tokens: TokenCounts | None,
    *,
    job_cancelled: bool,
) -> Decimal | None:
    """Write the call's priced usage row; return its cost (None: unpriced or no usage)."""
    if tokens is None or completion.usage is None:
        return None
    return insert_priced_usage(
        session,
        job_id=job.id,
        conversation_id=job.conversation_id,
        model=job.model,
        tenant=job.tenant,
        meta=job.meta,
        prompt_tokens=tokens.prompt_tokens,
        cached_tokens=tokens.cached_tokens,
        uncached_prompt_tokens=tokens.uncached_prompt_tokens,
        completion_tokens=tokens.completion_tokens,
        reasoning_tokens=tokens.reasoning_tokens,
        total_tokens=tokens.total_tokens,
        cache_write_tokens=tokens.cache_write_tokens,
        raw_usage=completion.usage,
        usage_issues=tokens.issues or None,
        job_cancelled=job_cancelled,
    )


def _record_cancelled_spend(
    session: Session,
    claimed: Claimed,
    completion: Completion,
    tokens: TokenCounts | None,
) -> None:
    """A call that finished after its job was cancelled was still paid for: keep its usage
    (flagged ``job_cancelled``) and the attempt's outcome; the reply itself is discarded."""
    locked = _lock_job(session, claimed.job_id)
    if locked is None:
        return
    job, _ = locked
    if job.status != "cancelled" or job.attempts != claimed.attempt:
        return
    _insert_usage(session, job, completion, tokens, job_cancelled=True)
    _finish_attempt(
        session,
        job.id,
        claimed.attempt,
        {
            **_call_outcome(completion),
            "error_type": "cancelled",
            "error": "the job was cancelled while this call ran; its reply was discarded",
        },
    )


def _record_cancelled_failure(session: Session, claimed: Claimed, error: GatewayError) -> None:
    """Keep the outcome of a call that failed after its job was cancelled, on its attempt."""
    locked = _lock_job(session, claimed.job_id)
    if locked is None:
        return
    job, _ = locked
    if job.status != "cancelled" or job.attempts != claimed.attempt:
        return
    _finish_attempt(
        session,
        job.id,
        claimed.attempt,
        {
            "http_status": error.status,
            "gateway_request_id": error.request_id,
            "retryable": error.retryable,
            "surface": error.surface,
            "error_type": "cancelled",
            "error": _clip(
                f"the job was cancelled while this call ran; it failed: {error.describe()}"
            ),
        },
    )


def _clip(text_value: str) -> str:
    if len(text_value) <= c.MAX_STORED_ERROR_CHARS:
        return text_value
    return text_value[: c.MAX_STORED_ERROR_CHARS] + "…"


def record_failure(
    session: Session,
    claimed: Claimed,
    error: GatewayError,
    *,
    final: bool,
    retry_in_s: float = 0.0,
    park: bool = False,
) -> Job | None:
    """Record a failed attempt; ``final`` ends the job, else it is retried in ``retry_in_s``."""
    owned = _owned(session, claimed.job_id, claimed.attempt)
    if owned is None:
        _record_cancelled_failure(session, claimed, error)
        return None
    job, now = owned
    message = _clip(error.message)
    _finish_attempt(
        session,
        job.id,
        claimed.attempt,
        {
            "http_status": error.status,
            "error_type": error.error_type,
            "error": message,
            "gateway_request_id": error.request_id,
            "retryable": error.retryable,
            "surface": error.surface,
        },
    )
    job.error_type = error.error_type
    job.error_status = error.status
    job.error = _clip(error.describe())
    job.lease_expires_at = None
    job.lease_holder = None
    if final:
        job.status = "failed"
        job.finished_at = now
        _add_webhook(session, job)
    else:
        job.status = "retrying"
        job.dispatched_at = now + timedelta(seconds=retry_in_s)
        # A backoff too long for a countdown message waits here; the sweep publishes it.
        job.needs_publish = park
    return job


def cancel_job(session: Session, job_id: uuid.UUID, *, tenants: Tenants = None) -> Job:
    """End a job that has not ended yet as ``cancelled``; cancelling twice is a no-op.

    A queued or retrying job never runs. A running attempt cannot be interrupted, but it no
    longer owns the job, so its reply is discarded when it arrives. A job outside
    ``tenants`` raises JobNotFound, like an unknown one.
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
    _add_webhook(session, job)
    return job


# --- reading -------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def job_view(session: Session, job_id: uuid.UUID, *, tenants: Tenants = None) -> dict[str, Any]:
    """The job as callers see it: status, reply, usage and error, JSON-ready.

    A job outside ``tenants`` raises JobNotFound, exactly like an unknown id.
    """
    job = session.get(Job, job_id)
    if job is None or not visible(job.tenant, tenants):
        raise JobNotFound(job_id)
    reply = session.execute(
        select(Message.content, Message.tool_calls, Message.thinking_blocks)
        .where(Message.job_id == job.id, Message.role == "assistant")
        .order_by(Message.seq.desc())
        .limit(1)
    ).first()
    usage = session.execute(
        select(
            TokenUsage.prompt_tokens,
            TokenUsage.completion_tokens,
            TokenUsage.cached_tokens,
            TokenUsage.total_tokens,
        ).where(TokenUsage.job_id == job.id)
    ).first()
    return view_of(
        job,
        content=reply.content if reply else None,
        tool_calls=reply.tool_calls if reply else None,
        usage=usage._asdict() if usage else None,
        thinking_blocks=reply.thinking_blocks if reply else None,
    )


def view_of(
    job: Job,
    *,
    content: str | None,
    tool_calls: list[Any] | None,
    usage: dict[str, int] | None,
    thinking_blocks: list[Any] | None = None,
) -> dict[str, Any]:
    """The JSON view of ``job`` given its reply and usage counts (see ``job_view``).

    ``thinking_blocks`` (Anthropic surface) are what a producer keeping its own history
    sends back on the reply's assistant message for thinking to continue.
    """
    return {
        "job_id": str(job.id),
        "conversation_id": str(job.conversation_id),
        "status": job.status,
        "model": job.model,
        "surface": job.surface,
        "attempts": job.attempts,
        "content": content,
        "tool_calls": tool_calls,
        "thinking_blocks": thinking_blocks,
        "finish_reason": job.finish_reason,
        "usage": usage,
        "error": (
            {"type": job.error_type, "status": job.error_status, "message": job.error}
            if job.error_type
            else None
        ),
        "tenant": job.tenant,
        "metadata": job.meta,
        # Who runs the job now and until when their lease holds (renewed while it runs).
        "lease": (
            {"holder": job.lease_holder, "expires_at": _iso(job.lease_expires_at)}
            if job.status == "running"
            else None
        ),
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "first_token_at": _iso(job.first_token_at),
        "finished_at": _iso(job.finished_at),
        "replay_of": str(job.replay_of) if job.replay_of else None,
    }


def conversation_view(
    session: Session, conversation_id: uuid.UUID, *, tenants: Tenants = None
) -> dict[str, Any]:
    """The conversation's messages in order and its jobs; outside ``tenants``, not found."""
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
    return {
        "conversation_id": str(conversation.id),
        "tenant": conversation.tenant,
        "metadata": conversation.meta,
        "created_at": _iso(conversation.created_at),
        "messages": [
            {
                k: v
                for k, v in {
                    "seq": m.seq,
                    "role": m.role,
                    "content": m.content_parts if m.content_parts is not None else m.content,
                    "name": m.name,
                    "tool_calls": m.tool_calls,
                    "tool_call_id": m.tool_call_id,
                    "thinking_blocks": m.thinking_blocks,
                    "job_id": str(m.job_id) if m.job_id else None,
                }.items()
                if v is not None
            }
            for m in messages
        ],
        "jobs": [{"job_id": str(job_id), "status": status} for job_id, status in jobs],
    }


def next_waiting_job(session: Session, conversation_id: uuid.UUID) -> uuid.UUID | None:
    """The earliest queued turn of the conversation, marked as published, if any.

    The caller publishes it after the commit; a turn parked while it waited is then no
    longer the sweep's to publish.
    """
    earliest = (
        select(Job.id)
        .where(Job.conversation_id == conversation_id, Job.status == "queued")
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

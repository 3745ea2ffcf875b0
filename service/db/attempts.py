"""The worker's hot path in SQL: claim a job for an attempt, record how the attempt ended.

Each step is one statement, written once as SQL text (compiled once, no ORM unit of work):
the claim is the ``ezq_claim_job`` function (migrations 0015, 0018), a success or a failure
one statement of data-modifying CTEs (a success with its priced usage row). Each is atomic
by itself, so a caller may run it on an autocommit connection (one round trip) or in its
own transaction; combining them with flow control's settlement and the webhook outbox is
``service.worker.record``'s job. The claim and the success, run once per job, go to the
driver directly (``service.db.driver``).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Row, column, func, literal_column, table, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from service import constants as c
from service.db import driver
from service.db.driver import DriverStatement
from service.db.pricing import cost_of, price_at, price_in_effect
from service.db.row_checks import on_row
from service.db.session import Executor
from service.errors import JobNotFound

# --- claiming ------------------------------------------------------------------------


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
    # The job's own new messages (the tail of ``messages``): they join the history with
    # the reply when the attempt succeeds.
    input_messages: list[dict[str, Any]] = field(default_factory=list)
    # Where the job's end is announced (None: no webhook), so that the record knows
    # whether it writes an outbox row.
    callback_url: str | None = None


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

# The columns of ``ezq_claim_job``'s row, read by name (``claim_outcome``).
CLAIM_COLUMNS = (
    "outcome",
    "status",
    "conversation_id",
    "attempt",
    "model",
    "params",
    "input_messages",
    "history",
    "tenant",
    "surface",
    "due_in_s",
    "blocking_job_id",
    "callback_url",
)
_CLAIM = DriverStatement.of(
    text(f"SELECT {', '.join(CLAIM_COLUMNS)} FROM ezq_claim_job(:job_id, :lease_seconds, :holder)")
)


def _history(rows: list[list[Any]]) -> list[dict[str, Any]]:
    """The conversation's messages, as sent to the gateway, from the claim's history rows."""
    history = []
    for row in rows:
        role, content, name, tool_calls, tool_call_id, thinking_blocks, refusal, reasoning = row
        message: dict[str, Any] = {"role": role, "content": content}
        if refusal is not None:
            message["refusal"] = refusal
        if reasoning is not None:
            message["reasoning_content"] = reasoning
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
    session: Executor,
    job_id: uuid.UUID,
    *,
    lease_seconds: float,
    holder: str | None = None,
) -> ClaimOutcome:
    """Take the job for one attempt, if it is its turn and nobody holds it. One round trip.

    On success the job is running with a lease, its ``job_attempts`` row is open, and the
    history comes back with it. A running job is never taken over here, whatever its lease
    says: only the sweep decides that a holder is gone (``queries.take_over``), because it
    alone knows whether the database has been reachable long enough for a live holder to
    have renewed its lease. A turn that must wait is parked (``needs_publish``): the turn
    before it publishes it when it ends, or the sweep does.
    """
    (row,) = driver.rows(
        session, _CLAIM, {"job_id": job_id, "lease_seconds": lease_seconds, "holder": holder}
    )
    return claim_outcome(row, job_id)


def claim_outcome(row: Any, job_id: uuid.UUID) -> ClaimOutcome:
    """What ``ezq_claim_job``'s row says (its columns by name), for the job ``job_id``."""
    outcome = row.outcome
    if outcome == "not_found":
        raise JobNotFound(job_id)
    if outcome == "finished":
        return AlreadyFinished(job_id, row.status)
    if outcome == "busy":
        return Busy(job_id)
    if outcome == "not_due":
        return NotYetDue(job_id, row.due_in_s)
    if outcome == "wait":
        return WaitForTurn(job_id, row.blocking_job_id)
    input_messages = list(row.input_messages)
    return Claimed(
        job_id=job_id,
        conversation_id=row.conversation_id,
        attempt=row.attempt,
        model=row.model,
        params=dict(row.params),
        messages=_history(row.history) + input_messages,
        tenant=row.tenant,
        surface=row.surface,
        input_messages=input_messages,
        callback_url=row.callback_url,
    )


# --- recording -----------------------------------------------------------------------

# What a recorded attempt returns of its job: enough for the job's JSON view, its usage
# row and its webhook, so that nothing is read back.
_JOB = (
    "id, conversation_id, status, model, surface, attempts, finish_reason, error_type,"
    " error_status, error, tenant, metadata AS meta, lease_holder, lease_expires_at,"
    " created_at, started_at, first_token_at, finished_at, replay_of, callback_url, batch_id"
)

# The next queued turn of the conversation, marked as published: the caller publishes it
# after the commit, and a turn parked while it waited is no longer the sweep's to publish.
# Read through the conversation's turns in order, its state checked on each row
# (``row_checks``): checked in the WHERE, with statistics taken when nothing waited, the
# plan read every pending job through a pending jobs' index at each record.
_NEXT_TURN = (
    """
next_turn AS (
    UPDATE jobs SET needs_publish = false, dispatched_at = now()
     WHERE {condition} id = (
        SELECT n.id FROM jobs n
         WHERE n.conversation_id = :conversation_id AND """
    + on_row("n.status = 'queued'")
    + """
         ORDER BY n.enqueue_seq LIMIT 1)
    RETURNING id
)"""
)

# One row always: the job's columns are NULL when this attempt no longer owned it
# (cancelled, or taken over), and ``next_job_id`` says which turn to publish.
_RESULT = (
    "SELECT owned.*, (SELECT id FROM next_turn) AS next_job_id"
    " FROM (SELECT 1) AS one LEFT JOIN owned ON true"
)

# The call's priced usage row, written by the statement that ends the job (so it exists only
# if the job is still this attempt's), priced by ``service.db.pricing`` (the model's price
# in effect now, and ``cost_of``), rendered once. A second row for the job is not written.
_COUNTS = (
    "prompt_tokens",
    "cached_tokens",
    "uncached_prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "total_tokens",
    "cache_write_tokens",
)
USAGE_COLUMNS = (*_COUNTS, "raw_usage", "usage_issues")


def _pricing_sql() -> tuple[str, str]:
    """The price in effect now for the model of ``owned`` (a subquery, for a lateral join
    named ``price``) and ``cost_of`` the usage row ``u`` at that price, as SQL."""
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    model: ColumnElement[str] = literal_column("owned.model")
    now: ColumnElement[datetime] = func.now()
    usage = table("u", *(column(name) for name in _COUNTS))
    literal = {"literal_binds": True}
    return (
        str(price_in_effect(model, now).compile(dialect=dialect, compile_kwargs=literal)),
        str(cost_of(usage, price_at(model, now)).compile(dialect=dialect, compile_kwargs=literal)),
    )


_PRICE, _COST = _pricing_sql()
_USAGE_ROW = f"""
usage_row AS (
    INSERT INTO token_usage (job_id, conversation_id, model, tenant, metadata,
                             {", ".join(USAGE_COLUMNS)}, price_id, cost_usd)
    SELECT owned.id, owned.conversation_id, owned.model, owned.tenant, owned.meta,
           {", ".join(f"u.{name}" for name in _COUNTS)},
           :raw_usage, :usage_issues, price.id, {_COST}
      FROM owned
     CROSS JOIN (SELECT {", ".join(f"CAST(:{name} AS integer) AS {name}" for name in _COUNTS)}) AS u
      LEFT JOIN LATERAL ({_PRICE}) AS price ON true
    ON CONFLICT (job_id) DO NOTHING
    RETURNING cost_usd
),"""


# The job's own row, found by id (not through the index of running jobs).
_RUNNING = on_row("status = 'running'")


def _success(with_usage: bool) -> DriverStatement:
    usage_row = _USAGE_ROW if with_usage else ""
    cost = "(SELECT cost_usd FROM usage_row)" if with_usage else "NULL::numeric"
    statement = text(
        f"""
WITH owned AS (
    UPDATE jobs SET status = 'succeeded', finish_reason = :finish_reason,
           first_token_at = :first_token_at, finished_at = now(), lease_expires_at = NULL,
           lease_holder = NULL, error_type = NULL, error_status = NULL, error = NULL
     WHERE id = :job_id AND {_RUNNING} AND attempts = :attempt
    RETURNING {_JOB}
),
last AS (
    SELECT coalesce(max(m.seq), 0) AS seq FROM messages m
     WHERE m.conversation_id = :conversation_id
),
added AS (
    INSERT INTO messages (conversation_id, seq, role, content, content_parts, name,
                          tool_calls, tool_call_id, thinking_blocks, refusal,
                          reasoning_content, job_id)
    SELECT owned.conversation_id, last.seq + r.i, r.role, r.content, r.content_parts, r.name,
           r.tool_calls, r.tool_call_id, r.thinking_blocks, r.refusal, r.reasoning_content,
           owned.id
      FROM owned, last, jsonb_to_recordset(:messages) AS r(
           i integer, role text, content text, content_parts jsonb, name text,
           tool_calls jsonb, tool_call_id text, thinking_blocks jsonb, refusal text,
           reasoning_content text)
),
attempt AS (
    UPDATE job_attempts SET finished_at = now(), http_status = :http_status,
           first_token_at = :first_token_at, gateway_request_id = :request_id,
           surface = :surface
     WHERE job_id = :job_id AND attempt = :attempt AND EXISTS (SELECT FROM owned)
),{usage_row}
{_NEXT_TURN.format(condition="")}
SELECT owned.*, (SELECT id FROM next_turn) AS next_job_id, {cost} AS cost_usd
  FROM (SELECT 1) AS one LEFT JOIN owned ON true
"""
    )
    return DriverStatement.of(statement, json=("messages", "raw_usage", "usage_issues"))


# Built once each: a success with a usage object, and one without.
_SUCCESS = {True: _success(True), False: _success(False)}

# A retry is a new call: a batch line whose batch was cancelled while its call ran is
# cancelled instead of retried (``stopped``), as its lines not started were.
_FAILURE = text(
    f"""
WITH stopped AS (
    -- FOR SHARE: a batch cancel not yet committed is waited for and read once it is (a
    -- plain read would see the batch still running and schedule the retry).
    SELECT NOT :final AND EXISTS (
               SELECT FROM batches b
                WHERE b.id = j.batch_id AND b.status IN ('cancelling', 'cancelled')
                  FOR SHARE
           ) AS yes
      FROM jobs j WHERE j.id = :job_id
),
owned AS (
    UPDATE jobs SET error_type = :error_type, error_status = :http_status, error = :job_error,
           lease_expires_at = NULL, lease_holder = NULL,
           status = CASE WHEN :final THEN 'failed' WHEN stopped.yes THEN 'cancelled'
                         ELSE 'retrying' END,
           finished_at = CASE WHEN :final OR stopped.yes THEN now() ELSE finished_at END,
           dispatched_at = CASE WHEN :final OR stopped.yes THEN dispatched_at
                                ELSE now() + make_interval(secs => :retry_in_s) END,
           needs_publish = CASE WHEN :final OR stopped.yes THEN needs_publish ELSE :park END
      FROM stopped
     WHERE id = :job_id AND {_RUNNING} AND attempts = :attempt
    RETURNING {_JOB}
),
attempt AS (
    UPDATE job_attempts SET finished_at = now(), http_status = :http_status,
           error_type = :error_type, error = :attempt_error, gateway_request_id = :request_id,
           retryable = :retryable, surface = :surface
     WHERE job_id = :job_id AND attempt = :attempt AND EXISTS (SELECT FROM owned)
),
{_NEXT_TURN.format(condition="(:final OR (SELECT yes FROM stopped)) AND")}
{_RESULT}
"""
).columns(meta=JSONB)


@dataclass(frozen=True, slots=True)
class Ended:
    """How a recorded attempt left its job: the job's row after the write (None when the
    attempt no longer owned it), the next turn of its conversation to publish, and the
    cost of the usage row written with it (None: none written, or the model unpriced)."""

    job: Row[Any] | None
    next_job_id: uuid.UUID | None
    cost_usd: Decimal | None = None


def _ended(row: Row[Any]) -> Ended:
    return Ended(
        row if row.id is not None else None, row.next_job_id, getattr(row, "cost_usd", None)
    )


def content_columns(content: Any) -> dict[str, Any]:
    """The ``content`` and ``content_parts`` columns for a string or an array of parts."""
    if not isinstance(content, list):
        return {"content": content, "content_parts": None}
    texts = [p["text"] for p in content if isinstance(p, dict) and p.get("type") == "text"]
    return {"content": "\n".join(texts) if texts else None, "content_parts": content}


def message_rows(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` as rows of the ``messages`` table, numbered from 1 in order."""
    return [
        {
            "i": i,
            "role": m["role"],
            **content_columns(m.get("content")),
            "name": m.get("name"),
            "tool_calls": m.get("tool_calls"),
            "tool_call_id": m.get("tool_call_id"),
            "thinking_blocks": m.get("thinking_blocks"),
            "refusal": m.get("refusal"),
            "reasoning_content": m.get("reasoning_content"),
        }
        for i, m in enumerate(messages, start=1)
    ]


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """What a finished gateway call records on its attempt row."""

    http_status: int | None
    request_id: str | None
    surface: str | None
    first_token_at: datetime | None = None


def record_success(
    session: Executor,
    claimed: Claimed,
    call: CallOutcome,
    *,
    finish_reason: str | None,
    reply: dict[str, Any],
    usage: Mapping[str, Any] | None = None,
) -> Ended:
    """The job succeeded with ``reply``, if this attempt still owns it. One round trip,
    atomic by itself.

    The job's own messages join the history together with its reply, so a failed turn
    leaves the history untouched and concurrent turns never interleave. ``usage`` (the
    values of ``USAGE_COLUMNS``) is written with them as the job's priced ``token_usage``
    row, its cost in ``Ended``.
    """
    (row,) = driver.rows(
        session,
        _SUCCESS[usage is not None],
        {
            **(usage or {}),
            "job_id": claimed.job_id,
            "attempt": claimed.attempt,
            "conversation_id": claimed.conversation_id,
            "finish_reason": finish_reason,
            "first_token_at": call.first_token_at,
            "messages": message_rows([*claimed.input_messages, reply]),
            "http_status": call.http_status,
            "request_id": call.request_id,
            "surface": call.surface,
        },
    )
    return _ended(row)


def clip(text_value: str) -> str:
    """``text_value`` cut to what an error column keeps."""
    if len(text_value) <= c.MAX_STORED_ERROR_CHARS:
        return text_value
    return text_value[: c.MAX_STORED_ERROR_CHARS] + "…"


@dataclass(frozen=True, slots=True)
class FailedCall:
    """A failed gateway call as its attempt row and its job keep it."""

    call: CallOutcome
    error_type: str
    attempt_error: str  # the gateway's message, on the attempt
    job_error: str  # the described error, on the job
    retryable: bool


def record_failure(
    session: Session,
    claimed: Claimed,
    failed: FailedCall,
    *,
    final: bool,
    retry_in_s: float = 0.0,
    park: bool = False,
) -> Ended:
    """Record a failed attempt, if it still owns the job. One round trip.

    ``final`` ends the job (and wakes the conversation's next turn), else it is retried in
    ``retry_in_s``; ``park`` leaves a backoff too long for a countdown message to the sweep.
    """
    row = session.execute(
        _FAILURE,
        {
            "job_id": claimed.job_id,
            "attempt": claimed.attempt,
            "conversation_id": claimed.conversation_id,
            "final": final,
            "park": park,
            "retry_in_s": retry_in_s,
            "error_type": failed.error_type,
            "http_status": failed.call.http_status,
            "attempt_error": clip(failed.attempt_error),
            "job_error": clip(failed.job_error),
            "request_id": failed.call.request_id,
            "retryable": failed.retryable,
            "surface": failed.call.surface,
        },
    ).one()
    return _ended(row)


_CANCELLED_ATTEMPT = text(
    f"""
WITH job AS (
    SELECT {_JOB} FROM jobs
     WHERE id = :job_id AND status = 'cancelled' AND attempts = :attempt
       FOR UPDATE
),
attempt AS (
    UPDATE job_attempts SET finished_at = now(), http_status = :http_status,
           first_token_at = :first_token_at, gateway_request_id = :request_id,
           surface = :surface, retryable = :retryable, error_type = 'cancelled',
           error = :error
     WHERE job_id = :job_id AND attempt = :attempt AND EXISTS (SELECT FROM job)
)
SELECT * FROM job
"""
).columns(meta=JSONB)


def record_cancelled_attempt(
    session: Session,
    claimed: Claimed,
    call: CallOutcome,
    *,
    error: str,
    retryable: bool | None = None,
) -> Row[Any] | None:
    """Keep the outcome of a call that ended after its job was cancelled, on its attempt;
    return the job's row (None if the job is not this attempt's cancelled job)."""
    return session.execute(
        _CANCELLED_ATTEMPT,
        {
            "job_id": claimed.job_id,
            "attempt": claimed.attempt,
            "http_status": call.http_status,
            "first_token_at": call.first_token_at,
            "request_id": call.request_id,
            "surface": call.surface,
            "retryable": retryable,
            "error": clip(error),
        },
    ).one_or_none()

"""Recording how an attempt ended: the job's rows, its priced usage and its webhook outbox
row, in one short transaction. What must reach the broker once it has committed (the
conversation's next turn, the webhook deliveries) comes back as ``FollowUps``.

A success that writes no outbox row and owes flow control no settlement (no webhook, no
limit or budget configured) is one statement, atomic by itself, and runs on an autocommit
connection: one round trip instead of four (BEGIN, the job's rows, its usage, COMMIT)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import Row
from sqlalchemy.orm import Session

from service import views
from service.completion import Completion
from service.db import attempts
from service.db.attempts import CallOutcome, Claimed, FailedCall
from service.db.session import Executor, autocommit, transaction
from service.errors import GatewayError, ReplyDefect
from service.flow.release import Settlement, settle_in
from service.tokens import TokenCounts
from service.usage.costs import insert_priced_usage
from service.webhooks import outbox as webhook_outbox

CANCELLED_REPLY = "the job was cancelled while this call ran; its reply was discarded"


@dataclass(frozen=True, slots=True)
class FollowUps:
    """What to publish after the commit: the next turn to wake, the webhooks to send."""

    next_job_id: uuid.UUID | None = None
    webhook_ids: list[uuid.UUID] = field(default_factory=list)
    # Throttled jobs woken because this call's capacity freed.
    woken: list[uuid.UUID] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Recorded:
    """The outcome as written. ``job`` is None when the attempt no longer owned its job
    (cancelled, or taken over); ``view`` is the job's JSON view, ``cost_usd`` the cost of
    its usage row (None: unpriced or no usage)."""

    job: Row[Any] | None
    view: dict[str, Any]
    follow_ups: FollowUps
    cost_usd: Decimal | None = None
    # A call that ended after its job was cancelled: the job as its attempt was recorded
    # (``cost_usd`` is then that call's usage row's, flagged ``job_cancelled``).
    cancelled: Row[Any] | None = None


def _call(completion: Completion) -> CallOutcome:
    return CallOutcome(
        http_status=completion.http_status,
        request_id=completion.request_id,
        surface=completion.surface,
        first_token_at=completion.first_token_at,
    )


def _usage(completion: Completion, tokens: TokenCounts | None) -> dict[str, Any] | None:
    """The call's usage as its ``token_usage`` row keeps it (``attempts.USAGE_COLUMNS``);
    None when the stream carried no usage."""
    return usage_columns(completion.usage, tokens)


def usage_columns(raw: dict[str, Any] | None, tokens: TokenCounts | None) -> dict[str, Any] | None:
    """A usage object (``raw``) and its counts as a ``token_usage`` row's columns."""
    if tokens is None or raw is None:
        return None
    return {
        "prompt_tokens": tokens.prompt_tokens,
        "cached_tokens": tokens.cached_tokens,
        "uncached_prompt_tokens": tokens.uncached_prompt_tokens,
        "completion_tokens": tokens.completion_tokens,
        "reasoning_tokens": tokens.reasoning_tokens,
        "total_tokens": tokens.total_tokens,
        "cache_write_tokens": tokens.cache_write_tokens,
        "raw_usage": raw,
        "usage_issues": tokens.issues or None,
    }


def _insert_usage(
    session: Session, job: Row[Any], usage: dict[str, Any], **flags: bool
) -> Decimal | None:
    """Write the job's priced usage row apart from its reply; return its cost."""
    return insert_priced_usage(
        session,
        job_id=job.id,
        conversation_id=job.conversation_id,
        model=job.model,
        tenant=job.tenant,
        meta=job.meta,
        **usage,
        **flags,
    )


def _insert_cancelled_usage(
    session: Session, job: Row[Any] | None, usage: dict[str, Any] | None
) -> Decimal | None:
    """Write the priced usage row of a call whose job was cancelled while it ran (if the
    attempt was recorded and the call sent usage); return its cost."""
    if job is None or usage is None:
        return None
    return _insert_usage(session, job, usage, job_cancelled=True)


def _webhooks(session: Session, job: Row[Any], view: dict[str, Any]) -> list[uuid.UUID]:
    # The outbox: the event is written in the transaction that ends the job, so a worker
    # that dies after this commit cannot lose it (the sweep publishes it).
    delivery = webhook_outbox.add_for_job(session, job, view)
    return [delivery] if delivery is not None else []


def record_succeeded(
    claim: Claimed,
    completion: Completion,
    tokens: TokenCounts | None,
    settlement: Settlement | None = None,
) -> Recorded:
    """Store the reply, the history, the priced usage and the webhook, if still ours, and
    settle the call with flow control."""
    return _committed(_record_succeeded(claim, completion, tokens, settlement), settlement)


def _committed(recorded: Recorded, settlement: Settlement | None) -> Recorded:
    # The transaction that settled the call has committed: nothing is left to settle.
    if settlement is not None:
        settlement.done = True
    return recorded


def _record_succeeded(
    claim: Claimed,
    completion: Completion,
    tokens: TokenCounts | None,
    settlement: Settlement | None,
) -> Recorded:
    usage = _usage(completion, tokens)
    # Built from what was just written rather than read back.
    summary = tokens.summary() if tokens is not None and usage is not None else None
    ended: attempts.Ended | None = None
    if claim.callback_url is None and (settlement is None or not settlement.owed):
        with autocommit() as conn:
            ended = _write_success(conn, claim, completion, usage)
        if ended.job is not None:
            view = _success_view(ended.job, completion, summary)
            return Recorded(ended.job, view, FollowUps(ended.next_job_id), ended.cost_usd)
        # No longer ours: the statement wrote nothing of the job (it did mark the next turn
        # as published, which it returned); the way below keeps the call's outcome and
        # usage on the cancelled job.
    with transaction() as session:
        if ended is None:
            ended = _write_success(session, claim, completion, usage)
        job = ended.job
        if job is None:
            # A call that finished after its job was cancelled was still paid for: keep its
            # usage (flagged ``job_cancelled``) and the attempt's outcome, not the reply.
            cancelled = attempts.record_cancelled_attempt(
                session, claim, _call(completion), error=CANCELLED_REPLY
            )
            cost = _insert_cancelled_usage(session, cancelled, usage)
            woken = settle_in(session, settlement, claim.job_id, claim.attempt)
            view = views.job_view(session, claim.job_id)
            follow_ups = FollowUps(ended.next_job_id, woken=woken)
            return Recorded(None, view, follow_ups, cost, cancelled=cancelled)
        woken = settle_in(session, settlement, claim.job_id, claim.attempt)
        view = _success_view(job, completion, summary)
        webhooks = _webhooks(session, job, view) if job.callback_url is not None else []
    return Recorded(job, view, FollowUps(ended.next_job_id, webhooks, woken), ended.cost_usd)


def _write_success(
    executor: Executor, claim: Claimed, completion: Completion, usage: dict[str, Any] | None
) -> attempts.Ended:
    return attempts.record_success(
        executor,
        claim,
        _call(completion),
        finish_reason=completion.finish_reason,
        reply=completion.reply_message(),
        usage=usage,
    )


def _success_view(
    job: Row[Any], completion: Completion, usage: dict[str, int] | None
) -> dict[str, Any]:
    return views.view_of(
        job,
        content=completion.content,
        tool_calls=completion.tool_calls,
        usage=usage,
        thinking_blocks=completion.thinking_blocks,
        reasoning_content=completion.reasoning_content,
    )


def record_failed(
    claim: Claimed,
    error: GatewayError,
    *,
    final: bool,
    retry_in_s: float,
    park: bool,
    settlement: Settlement | None = None,
    tokens: TokenCounts | None = None,
) -> Recorded:
    """Record a failed attempt: the job ends (``final``) or is retried in ``retry_in_s``;
    settle the call with flow control. ``tokens`` counts the usage object of a call that
    was answered in full but could not be used (``ReplyDefect.usage``): it was paid for,
    so its priced usage row is written with the failure."""
    usage = usage_columns(error.usage, tokens) if isinstance(error, ReplyDefect) else None
    recorded = _record_failed(claim, error, final, retry_in_s, park, settlement, usage, tokens)
    return _committed(recorded, settlement)


def _record_failed(
    claim: Claimed,
    error: GatewayError,
    final: bool,
    retry_in_s: float,
    park: bool,
    settlement: Settlement | None,
    usage: dict[str, Any] | None,
    tokens: TokenCounts | None,
) -> Recorded:
    call = CallOutcome(http_status=error.status, request_id=error.request_id, surface=error.surface)
    with transaction() as session:
        ended = attempts.record_failure(
            session,
            claim,
            FailedCall(
                call=call,
                error_type=error.error_type,
                attempt_error=error.message,
                job_error=error.describe(),
                retryable=error.retryable,
            ),
            final=final,
            retry_in_s=retry_in_s,
            park=park,
        )
        job = ended.job
        if job is None:
            cancelled = attempts.record_cancelled_attempt(
                session,
                claim,
                call,
                error=f"the job was cancelled while this call ran; it failed: {error.describe()}",
                retryable=error.retryable,
            )
            cost = _insert_cancelled_usage(session, cancelled, usage)
            woken = settle_in(session, settlement, claim.job_id, claim.attempt)
            view = views.job_view(session, claim.job_id)
            follow_ups = FollowUps(ended.next_job_id, woken=woken)
            return Recorded(None, view, follow_ups, cost, cancelled=cancelled)
        # A failed job has no reply; it has usage only when the failed call was paid for.
        cost = _insert_usage(session, job, usage) if usage is not None else None
        summary = tokens.summary() if tokens is not None and usage is not None else None
        view = views.view_of(job, content=None, tool_calls=None, usage=summary)
        ended_now = final and job.callback_url is not None
        webhooks = _webhooks(session, job, view) if ended_now else []
        woken = settle_in(session, settlement, claim.job_id, claim.attempt)
    return Recorded(job, view, FollowUps(ended.next_job_id, webhooks, woken), cost)

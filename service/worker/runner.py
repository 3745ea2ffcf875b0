"""Running one job: claim, call the gateway, record the outcome. No Celery here."""

from __future__ import annotations

import functools
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from service import constants as c
from service import metrics, views
from service.completion import Completion
from service.config import Settings
from service.db import attempts, queries
from service.db import flow as flow_db
from service.db.session import (
    UNAVAILABLE,
    autocommit,
    refusal,
    transaction,
    unavailable_because,
)
from service.errors import GatewayError, InternalError, ReplyDefect
from service.flow import admission
from service.flow.release import Settlement, after_admission, release
from service.gateway.retry import backoff_seconds, is_retryable
from service.live import publisher as live_publisher
from service.tokens import TokenCounts, normalise_usage
from service.worker.dispatch import publish_jobs
from service.worker.liveness import ActiveJobs
from service.worker.record import FollowUps, record_failed, record_succeeded

log = logging.getLogger(__name__)

PublishWebhooks = Callable[[list[uuid.UUID]], None]


class Gateway(Protocol):
    def complete(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any], surface: str
    ) -> Completion: ...


@dataclass(frozen=True, slots=True)
class Finished:
    """The job has ended (now or earlier); ``result`` is its JSON view."""

    result: dict[str, Any]

    @property
    def failed(self) -> bool:
        return bool(self.result["status"] != "succeeded")


@dataclass(frozen=True, slots=True)
class RunAgainLater:
    """Deliver the job again after ``countdown`` seconds."""

    countdown: float
    reason: str


@dataclass(frozen=True, slots=True)
class LeftAlone:
    """Another worker is running this job; this delivery is a duplicate."""


@dataclass(frozen=True, slots=True)
class Parked:
    """The job waits in the database, with no message: the turn before it publishes it when
    it ends, or the sweep does when it is due. This delivery is dropped.

    ``ran``: the view of another job this delivery ran in its place, when that job ended:
    its end is announced to live listeners as any job's is."""

    reason: str
    ran: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Dropped:
    """The job had ended before this message was taken (a stale message: a batch line
    cancelled, a delivery again after the end) and nobody waits for the message's result:
    it is dropped without reading the job, and nothing else could run in its place."""

    reason: str


Outcome = Finished | RunAgainLater | LeftAlone | Parked | Dropped


class JobLog(logging.LoggerAdapter[logging.Logger]):
    """Puts job, attempt and conversation on every line."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        # The same as fields, for JSON logs (EZQ_LOG_FORMAT=json).
        kwargs["extra"] = {
            "job_id": extra.get("job"),
            "attempt": extra.get("attempt"),
            "conversation_id": extra.get("conversation"),
            "tenant": extra.get("tenant"),
        }
        return (
            f"[job={extra.get('job')} attempt={extra.get('attempt')} "
            f"conversation={extra.get('conversation')}] {msg}",
            kwargs,
        )


def run_job(
    job_id: uuid.UUID,
    *,
    gateway: Gateway,
    settings: Settings,
    publish: Callable[[uuid.UUID], None],
    deliveries: int = 0,
    rng: random.Random | None = None,
    publish_webhooks: PublishWebhooks | None = None,
    holder: str | None = None,
    active: ActiveJobs | None = None,
    own_only: bool = False,
    create: queries.CompletionRequest | None = None,
) -> Outcome:
    """Take the job through one attempt and say what should happen next.

    No transaction or connection is held across the gateway call: the claim commits a
    lease first, and the outcome is written in a second short transaction that checks the
    attempt still owns the job, so a duplicate delivery cannot store a second reply. While
    the attempt runs, ``active`` lets the worker's heartbeat renew its lease.

    ``create``: the request of a first turn not written yet (a foreign message's), written
    as ``job_id`` by the claim's statement (already claimed when nothing is to be decided).
    An id already taken raises ``IntegrityError`` (``queries.id_taken``) with nothing
    written or claimed; any other failure of that statement raises too, and leaves nothing
    written either.
    """
    first = queries.first_turn_values(create, job_id) if create is not None else None
    if active is None:
        active = ActiveJobs()  # a caller that keeps no list: this call's own
    # A claim that lost its connection may have been committed: ``active`` knows it is in
    # doubt, and the heartbeat settles it (``ActiveJobs``).
    with active.claiming():
        gate, claim = _claim(job_id, settings, own_only=own_only, holder=holder, first=first)
        held = claim if isinstance(claim, attempts.Claimed) else None
        if held is not None:
            active.add(held.job_id, held.attempt)
    try:
        outcome = _after_claim(
            job_id,
            gate,
            claim,
            gateway=gateway,
            settings=settings,
            publish=publish,
            rng=rng,
            publish_webhooks=publish_webhooks,
            own_only=own_only,
        )
    except BaseException:
        if held is not None:
            active.abandon(held.job_id, held.attempt)  # its outcome may not be recorded
        raise
    if held is not None:
        active.discard(held.job_id, held.attempt)  # its outcome is recorded
    return outcome


def _after_claim(
    job_id: uuid.UUID,
    gate: admission.Admission,
    claim: attempts.ClaimOutcome | None,
    *,
    gateway: Gateway,
    settings: Settings,
    publish: Callable[[uuid.UUID], None],
    rng: random.Random | None,
    publish_webhooks: PublishWebhooks | None,
    own_only: bool,
) -> Outcome:
    """What the claim decided: the job ended, waits or is run by another message, or its
    attempt (``claim`` being ``Claimed``), recorded before this returns."""
    if (
        isinstance(claim, attempts.AlreadyFinished)
        and not own_only
        and claim.job_id == job_id
        and job_id not in gate.failed
    ):
        # Ended before this message came, and nobody waits for its result: its view is not
        # read and the task does not fail (a cancelled batch leaves thousands of these).
        after_admission(gate)
        return Dropped(f"job already {claim.status}")
    finished: dict[str, Any] | None = None
    if isinstance(claim, attempts.AlreadyFinished) or job_id in gate.failed:
        with transaction() as session:
            finished = views.job_view(session, job_id)
    # A retry due later than a message may wait is parked for the sweep, unless a producer
    # waits on this message for its result: the message then comes back until it is due.
    if (
        isinstance(claim, attempts.NotYetDue)
        and not own_only
        and claim.due_in_s > settings.max_countdown_seconds
    ):
        with transaction() as session:
            queries.park(session, job_id)
    after_admission(gate)
    if finished is not None:
        return Finished(finished)
    if claim is None:
        reason = f"throttled: {gate.hold.reason if gate.hold else 'no capacity'}"
        if own_only:  # the message must come back to report its own job's result
            return RunAgainLater(gate.retry_in(settings), reason)
        return Parked(reason)
    if isinstance(claim, attempts.Busy) and own_only and claim.job_id == job_id:
        # Run in another message's place: this one waits for it to end, for its result.
        return RunAgainLater(c.OWN_RESULT_RECHECK_S, "running in another message's place")
    if isinstance(claim, attempts.Busy):
        log.info("[job=%s] already running; duplicate delivery dropped", job_id)
        return LeftAlone()
    if isinstance(claim, attempts.NotYetDue):
        if claim.due_in_s > settings.max_countdown_seconds:
            if own_only:
                return RunAgainLater(settings.max_countdown_seconds, "retry not due yet")
            return Parked(f"retry due in {claim.due_in_s:.0f}s")
        return RunAgainLater(max(claim.due_in_s, 0.05), "retry not due yet")
    if isinstance(claim, attempts.WaitForTurn):
        if own_only:
            # The turn before publishes this one when it ends (the claim parked it), and
            # that message runs it; this one comes back to report its result.
            return RunAgainLater(
                c.OWN_RESULT_RECHECK_S, f"waiting for earlier turn {claim.blocking_job_id}"
            )
        return Parked(f"waiting for earlier turn {claim.blocking_job_id}")
    assert isinstance(claim, attempts.Claimed)
    # Flow control's step when the call ends (settle, wake throttled jobs) is taken in the
    # transaction that records the outcome, or on its own if that one did not happen.
    settlement = Settlement.of(gate)
    try:
        outcome = _attempt(
            claim,
            own_only=own_only,
            gateway=gateway,
            settings=settings,
            publish=publish,
            rng=rng,
            publish_webhooks=publish_webhooks,
            settlement=settlement,
        )
    finally:
        release(claim.job_id, claim.attempt, settlement)
    return _in_place_of(claim, outcome) if gate.swapped else outcome


def _claim(
    job_id: uuid.UUID,
    settings: Settings,
    *,
    own_only: bool,
    holder: str | None,
    first: Mapping[str, Any] | None,
) -> tuple[admission.Admission, attempts.ClaimOutcome | None]:
    """Flow control's step at claim (service.flow), then the claim of the job it chose.

    Most claims have nothing to decide: the message runs its own job, claimed on an
    autocommit connection in one round trip (where a transaction took four) by a short
    statement when nothing else waits and nothing is configured, else by the ranking's
    statement; with ``first``, the job is written by that statement, already claimed. The
    others decide in a transaction."""
    lease = flow_db.Lease(settings.lease_seconds, holder)
    with autocommit() as conn:
        ranking = admission.rank(
            conn, job_id, settings, own_only=own_only, claim=lease, first=first
        )
    if ranking.claim_row is not None:
        own = attempts.claim_outcome(ranking.claim_row, job_id)
        if isinstance(own, attempts.AlreadyFinished) and ranking.candidates and not own_only:
            return _in_ended_place(job_id, own, ranking, settings, lease)
        return admission.plain(ranking, job_id), own
    with transaction() as session:
        gate = admission.admit(session, job_id, ranking, settings)
        claim: attempts.ClaimOutcome | None = None
        if gate.job_id is not None:
            claim = attempts.claim_job(
                session, gate.job_id, lease_seconds=lease.seconds, holder=lease.holder
            )
            admission.claimed(session, gate, claim)
    return gate, claim


def _in_ended_place(
    job_id: uuid.UUID,
    ended: attempts.AlreadyFinished,
    ranking: flow_db.Ranking,
    settings: Settings,
    lease: flow_db.Lease,
) -> tuple[admission.Admission, attempts.ClaimOutcome]:
    """A stale message (its job had ended; nobody waits for its result) runs the best-ranked
    eligible job in its place, as one outranked does (``admission.admit_in_place``): the
    messages a cancelled batch leaves on the broker carry waiting work instead of holding
    it up. When none may start, the claim stays ``ended`` and the message is dropped. Only
    such a message pays this transaction, after the ranking that found it stale."""
    with transaction() as session:
        gate = admission.admit_in_place(session, job_id, ranking, settings)
        if gate.job_id is None:
            return gate, ended
        claim = attempts.claim_job(
            session, gate.job_id, lease_seconds=lease.seconds, holder=lease.holder
        )
        admission.claimed(session, gate, claim)
    return gate, claim


def _in_place_of(claim: attempts.Claimed, outcome: Outcome) -> Outcome:
    """What a message that ran another job than its own reports: its own job waits in the
    database, so the message is dropped. The job that ran keeps its own message on the
    broker, unless it had none (it was parked): a retry is then parked for the sweep."""
    if isinstance(outcome, RunAgainLater):
        with transaction() as session:
            queries.park(session, claim.job_id)
    ran = outcome.result if isinstance(outcome, Finished) else None
    return Parked(f"ran job {claim.job_id} in its place", ran=ran)


def _attempt(
    claim: attempts.Claimed,
    *,
    own_only: bool,
    gateway: Gateway,
    settings: Settings,
    publish: Callable[[uuid.UUID], None],
    rng: random.Random | None,
    publish_webhooks: PublishWebhooks | None,
    settlement: Settlement,
) -> Outcome:
    jlog = JobLog(
        log,
        {
            "job": claim.job_id,
            "attempt": claim.attempt,
            "conversation": claim.conversation_id,
            "tenant": claim.tenant,
        },
    )
    jlog.info("calling %s with %d messages", claim.model, len(claim.messages))

    call_started = datetime.now(UTC)

    def fail(error: GatewayError) -> Outcome:
        return _with_db_retries(
            lambda: _failed_attempt(
                claim,
                error,
                own_only=own_only,
                settings=settings,
                publish=publish,
                jlog=jlog,
                rng=rng,
                publish_webhooks=publish_webhooks,
                call_started=call_started,
                settlement=settlement,
            ),
            jlog,
            wait_up_to=settings.ezq_record_retry_for,
        )

    try:
        with live_publisher.attempt(claim.job_id, claim.attempt):
            completion = gateway.complete(claim.model, claim.messages, claim.params, claim.surface)
    except GatewayError as error:
        return fail(error)
    except Exception as caught:
        # A bug on our side, not the gateway's: fail the job visibly rather than leave it
        # running, to be taken over and crash again.
        jlog.exception("unexpected error while calling the gateway")
        return fail(InternalError(f"{type(caught).__name__}: {caught}"))

    usage = completion.usage
    tokens = normalise_usage(usage, surface=completion.surface) if usage is not None else None
    if completion.usage is None:
        jlog.warning("stream ended without a usage object; no usage row written")
    elif tokens is not None and tokens.issues:
        jlog.warning("usage object does not add up: %s", "; ".join(tokens.issues))
    try:
        return _with_db_retries(
            lambda: _succeeded_attempt(
                claim,
                completion,
                tokens,
                publish=publish,
                publish_webhooks=publish_webhooks,
                jlog=jlog,
                call_started=call_started,
                settlement=settlement,
            ),
            jlog,
            wait_up_to=settings.ezq_record_retry_for,
        )
    except UNAVAILABLE:
        raise  # still unreachable: the task delivers the job again later
    except Exception as caught:
        # The database refused what the gateway sent (e.g. a NUL character in the text):
        # fail the job now, rather than leave it running to be taken over and billed again.
        refused = _log_refusal(jlog, "the reply could not be stored", caught)
        return fail(InternalError(f"the reply could not be stored: {refused}"))


def _log_refusal(jlog: JobLog, what: str, caught: Exception) -> str:
    """Log that ``what`` failed and return why, quoting none of the values: the database's
    refusal by error class and SQLSTATE; anything else (a defect here) with its traceback."""
    refused = refusal(caught)
    if refused is None:
        jlog.exception(what)
        return type(caught).__name__
    jlog.error("%s: %s", what, refused)
    return refused


def _with_db_retries(
    record: Callable[[], Outcome], jlog: JobLog, *, wait_up_to: float = c.RECORD_RETRY_FOR_S
) -> Outcome:
    """Run ``record``, waiting out a database outage of up to ``wait_up_to`` seconds.

    The gateway call has been paid for: an outage must not throw its outcome away. Nobody
    can take the job over meanwhile (that needs the database too), and once the database
    is back the heartbeat renews the lease within a second, before the sweep could decide
    the worker was lost (see ``service.worker.sweep``).
    """
    deadline = time.monotonic() + wait_up_to
    pauses = iter(c.RECORD_RETRY_PAUSES_S)
    pause = c.RECORD_RETRY_PAUSES_S[0]
    failures = 0
    while True:
        try:
            outcome = record()
        except UNAVAILABLE as exc:
            if time.monotonic() + pause > deadline:
                jlog.error("database unavailable for %.0fs; giving the attempt up", wait_up_to)
                raise
            if failures == 0:
                jlog.warning(
                    "database unavailable while recording; waiting up to %.0fs: %s",
                    wait_up_to,
                    unavailable_because(exc),
                )
            failures += 1
            time.sleep(pause)
            pause = next(pauses, pause)
            continue
        if failures:
            jlog.warning("recorded after %d failed tries", failures)
        return outcome


def _succeeded_attempt(
    claim: attempts.Claimed,
    completion: Completion,
    tokens: TokenCounts | None,
    *,
    publish: Callable[[uuid.UUID], None],
    publish_webhooks: PublishWebhooks | None,
    jlog: JobLog,
    call_started: datetime,
    settlement: Settlement,
) -> Outcome:
    recorded = record_succeeded(claim, completion, tokens, settlement)
    if recorded.job is None:
        jlog.warning("the job is no longer ours (cancelled or taken over); reply discarded")
        if recorded.cancelled is not None:  # paid for all the same
            metrics.call_after_cancel(
                recorded.cancelled,
                outcome="success",
                error_type=metrics.NONE,
                call_started=call_started,
                tokens=tokens if completion.usage is not None else None,
                cost_usd=recorded.cost_usd,
            )
    else:
        jlog.info(
            "succeeded: finish_reason=%s request_id=%s",
            completion.finish_reason,
            completion.request_id,
        )
        metrics.job_succeeded(
            recorded.job,
            call_started=call_started,
            first_token_at=completion.first_token_at,
            tokens=tokens if completion.usage is not None else None,
            cost_usd=recorded.cost_usd,
        )
    _publish_follow_ups(recorded.follow_ups, publish, publish_webhooks)
    if recorded.job is not None:
        _batch_line_ended(recorded.job.batch_id)
    return Finished(recorded.view)


def _failed_attempt(
    claim: attempts.Claimed,
    error: GatewayError,
    *,
    own_only: bool,
    settings: Settings,
    publish: Callable[[uuid.UUID], None],
    jlog: JobLog,
    rng: random.Random | None,
    publish_webhooks: PublishWebhooks | None,
    call_started: datetime,
    settlement: Settlement,
) -> Outcome:
    final = not is_retryable(error) or claim.attempt >= settings.ezq_max_attempts
    countdown = backoff_seconds(
        claim.attempt,
        base=settings.ezq_retry_backoff_base,
        cap=settings.ezq_retry_backoff_max,
        rng=rng,
    )
    # A retry due later than a message may wait is parked for the sweep, unless a producer
    # waits on this message for its result: it then comes back as often as it may until
    # the retry is due (``_after_claim``).
    wait_long = not final and countdown > settings.max_countdown_seconds
    park = wait_long and not own_only
    # A reply answered in full but unusable was paid for: its usage is recorded.
    paid = error.usage if isinstance(error, ReplyDefect) else None
    tokens = normalise_usage(paid, surface=error.surface or "openai") if paid is not None else None
    record = functools.partial(
        record_failed,
        claim,
        error,
        final=final,
        retry_in_s=countdown,
        park=park,
        settlement=settlement,
    )
    try:
        recorded = record(tokens=tokens)
    except UNAVAILABLE:
        raise  # waited out by the caller
    except Exception as caught:
        if tokens is None:
            raise
        # The database refused the usage the gateway sent (a count past an integer, a NUL
        # in it): the failure is recorded without it rather than left running, to be taken
        # over and billed again.
        _log_refusal(jlog, "the usage of the failed call could not be stored", caught)
        jlog.warning("the failure is recorded without its usage")
        tokens = None
        recorded = record(tokens=None)
    view = recorded.view
    if recorded.job is None:
        jlog.warning("the job is no longer ours (cancelled or taken over); failure not recorded")
        if recorded.cancelled is not None:
            metrics.call_after_cancel(
                recorded.cancelled,
                outcome="failure",
                error_type=error.error_type,
                call_started=call_started,
                tokens=tokens,
                cost_usd=recorded.cost_usd,
            )
        _publish_follow_ups(recorded.follow_ups, publish, publish_webhooks)
        return (
            Finished(view)
            if view["status"] in ("succeeded", "failed", "cancelled")
            else LeftAlone()
        )
    # A batch line whose batch was cancelled meanwhile is not retried: it ended cancelled.
    stopped = not final and recorded.job.status == "cancelled"
    metrics.attempt_failed(
        recorded.job,
        error_type=error.error_type,
        final=final or stopped,
        call_started=call_started,
        tokens=tokens,
        cost_usd=recorded.cost_usd,
    )
    if stopped:
        jlog.warning(
            "attempt failed (%s, request_id=%s), not retried: its batch is cancelled",
            error.error_type,
            error.request_id,
        )
        _publish_follow_ups(recorded.follow_ups, publish, publish_webhooks)
        _batch_line_ended(recorded.job.batch_id)
        return Finished(view)
    if final:
        jlog.warning(
            "failed (%s, request_id=%s): %s", error.error_type, error.request_id, error.loggable()
        )
        _publish_follow_ups(recorded.follow_ups, publish, publish_webhooks)
        _batch_line_ended(recorded.job.batch_id)
        return Finished(view)
    jlog.warning(
        "attempt failed (%s, request_id=%s), retrying in %.1fs: %s",
        error.error_type,
        error.request_id,
        countdown,
        error.loggable(),
    )
    if park:
        return Parked(f"retry due in {countdown:.0f}s")
    if wait_long:
        return RunAgainLater(settings.max_countdown_seconds, error.error_type)
    return RunAgainLater(countdown, error.error_type)


def _batch_line_ended(batch_id: str | None) -> None:
    # The batch's last line ends it now rather than at the next sweep; after the commit,
    # in a transaction of its own. If this fails, the sweep finalises the batch.
    if batch_id is None:
        return
    from service.batches.lifecycle import finalize_ended

    try:
        finalize_ended(batch_id=batch_id)
    except Exception:
        log.warning("[batch=%s] not finalised now; the sweep will", batch_id, exc_info=True)


def _publish_follow_ups(
    follow_ups: FollowUps,
    publish: Callable[[uuid.UUID], None],
    publish_webhooks: PublishWebhooks | None,
) -> None:
    """After the commit that wrote them: wake the next turn and the throttled jobs, send the
    webhooks. If this process dies first, the sweep publishes them."""
    if follow_ups.woken:
        publish_jobs(follow_ups.woken)
    if follow_ups.next_job_id is not None:
        try:
            publish(follow_ups.next_job_id)
        except Exception:  # the waiting turn's own timer (or the sweep) still wakes it
            log.warning("could not publish the next turn %s", follow_ups.next_job_id, exc_info=True)
    if follow_ups.webhook_ids and publish_webhooks is not None:
        publish_webhooks(follow_ups.webhook_ids)

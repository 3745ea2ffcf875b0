"""The sweep: finds jobs that should be moving but are not, and moves them.

It runs inside every worker process (``service.worker.maintenance``), one at a time across
all of them: an advisory lock prevents two at once, and the ``sweep_runs`` row lets only
one run per interval. Each step picks rows with ``FOR UPDATE SKIP LOCKED`` and publishes
after its commit, so even two sweeps at once would be harmless.

1. Running jobs whose lease expired are taken over: the lost attempt ends as
   ``worker_lost`` (its worker stopped beating) or ``lease_expired`` (its worker beats
   but gave the job up), and the job is pending again (or failed, if that was its last
   attempt). Only when the previous sweep ran recently: right after a database outage
   every lease looks expired, and live workers need a beat to renew theirs.
2. Parked jobs (no message on the broker) that are due are published.
3. Jobs published a while ago that have not started are republished when the broker
   holds fewer messages than it should (a flushed or restarted broker, a worker that died
   between a commit and its publish), and after a long window whatever it says.
4. Webhook deliveries that are due and have no message are published: after the same short
   wait when the broker holds fewer messages than it should, else after a grace.
5. Flow control's admissions of lost calls are settled, old ones forgotten.
6. Open batches whose lines have all ended are finalised (files, status, their webhook).
7. With ``EZQ_RETENTION_DAYS`` set, content older than that is purged (``ezq purge``).
"""

from __future__ import annotations

import logging
import math
import uuid
import zlib
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from sqlalchemy import Connection, text
from sqlalchemy.exc import OperationalError

from service import metrics, views
from service.batches.lifecycle import finalize_ended
from service.config import Settings
from service.db import queries, recovery
from service.db.session import get_engine, transaction
from service.flow.release import sweep_flow
from service.webhooks import outbox as webhook_outbox
from service.webhooks.tasks import publish_deliveries, republish_due_deliveries
from service.worker.dispatch import publish_jobs, republish

log = logging.getLogger(__name__)

SWEEP_NAME = "sweep"
_LOCK_KEY = zlib.crc32(b"ezq.sweep")
# How long a forced sweep (the ``ezq.sweep`` task) waits for one running elsewhere to end.
FORCED_LOCK_WAIT_S = 30.0
LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of a lock_timeout
# Takeovers need the previous sweep to have run within this many intervals.
CONTINUITY_INTERVALS = 3.0

# How many run messages the broker holds on the given queues (None: it cannot tell).
BrokerDepth = Callable[[Collection[str]], int | None]


@dataclass(slots=True)
class SweepReport:
    taken_over: int = 0
    failed: int = 0
    parked: int = 0
    redispatched: int = 0
    webhooks: int = 0
    purged_conversations: int = 0
    batches: int = 0
    skipped_takeovers: bool = False
    published: list[uuid.UUID] = field(default_factory=list)

    @property
    def jobs(self) -> int:
        return self.taken_over + self.parked + self.redispatched


def sweep(
    settings: Settings,
    *,
    worker: str | None,
    broker_depth: BrokerDepth | None = None,
    force: bool = False,
    lock_wait_s: float | None = None,
) -> SweepReport | None:
    """Run one sweep if it is this process's turn; None if not.

    ``force`` runs it whenever the previous one ran, and first waits up to ``lock_wait_s``
    (default ``FORCED_LOCK_WAIT_S``) for a sweep running elsewhere to end: one asked for
    runs after the rows its caller wrote, rather than stepping aside for a sweep that may
    have started before them. A periodic sweep never waits."""
    if lock_wait_s is None:
        lock_wait_s = FORCED_LOCK_WAIT_S if force else 0.0
    engine = get_engine()
    with engine.connect() as lock_conn:
        if not _take_lock(lock_conn, wait_s=lock_wait_s):
            return None
        try:
            # The lock is the session's, not the transaction's: ended now, the connection
            # is not left idle in a transaction for the whole sweep (which a server's
            # ``idle_in_transaction_session_timeout`` would end part way).
            lock_conn.commit()
            with transaction() as session:
                turn = recovery.take_sweep_turn(
                    session,
                    name=SWEEP_NAME,
                    every_s=0.0 if force else settings.ezq_sweep_interval,
                    worker=worker or "ezq.sweep task",
                )
            if turn is None:
                return None
            window = continuity_window(settings)
            takeovers = turn.continuous_for(window)
            if not takeovers:
                log.info(
                    "sweep: the previous sweep ran %.0fs ago (more than %.0fs): no lease is"
                    " taken over this time, live workers renew theirs first",
                    turn.age_s,
                    window,
                )
            return _sweep(settings, takeovers=takeovers, broker_depth=broker_depth)
        finally:
            lock_conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_KEY})
            lock_conn.commit()


def _take_lock(lock_conn: Connection, *, wait_s: float) -> bool:
    """The sweep's advisory lock on this connection, waiting up to ``wait_s`` for it."""
    if wait_s <= 0:
        got = lock_conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _LOCK_KEY})
        return bool(got.scalar())
    # Local to this transaction, which the caller commits once it holds the lock.
    # At least 1 ms: a lock_timeout of 0 would wait for ever.
    wait_ms = max(1, math.ceil(wait_s * 1000))
    lock_conn.execute(text("SELECT set_config('lock_timeout', :ms, true)"), {"ms": f"{wait_ms}ms"})
    try:
        lock_conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _LOCK_KEY})
    except OperationalError as exc:
        if getattr(exc.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
            raise
        lock_conn.rollback()
        log.info("sweep: another sweep held the lock for %.0fs; this one did not run", wait_s)
        return False
    return True


def continuity_window(settings: Settings) -> float:
    """How recent the previous sweep must be for this one to take leases over.

    A few sweep intervals, and never as long as a lease less a beat: a database outage that
    long (a failover) lets live leases expire unrenewed, and the first sweep after it, its
    previous run from before the outage, must leave them to their workers' next beats."""
    interval = settings.ezq_sweep_interval or settings.ezq_heartbeat_interval
    return min(
        CONTINUITY_INTERVALS * interval,
        settings.lease_seconds - settings.ezq_heartbeat_interval,
    )


def _sweep(settings: Settings, *, takeovers: bool, broker_depth: BrokerDepth | None) -> SweepReport:
    report = SweepReport(skipped_takeovers=not takeovers)
    if takeovers:
        _take_over_expired(settings, report)
    with transaction() as session:
        parked = recovery.parked_due(session, limit=settings_batch())
    published = republish(parked)
    report.parked = len(published)
    report.published += published

    stale: list[uuid.UUID] = []
    messages_lost = False
    if broker_depth is not None:
        # Every worker on the database is one pool: the live jobs' messages may be on any
        # queue a live worker consumes, and this process's own.
        with transaction() as session:
            queues = recovery.consumed_queues(session, beat_within_s=settings.lease_seconds)
        depth = broker_depth({*queues, settings.ezq_queue})
    else:
        depth = None
    if depth is not None:
        with transaction() as session:
            expected = recovery.messages_expected(session)
            messages_lost = depth < expected
            if messages_lost:
                stale = recovery.take_stale(
                    session, older_than_s=settings.ezq_redispatch_after, limit=settings_batch()
                )
        if stale:
            log.warning(
                "sweep: the broker holds %d messages for %d live jobs; republishing %d",
                depth,
                expected,
                len(stale),
            )
    with transaction() as session:
        stale += recovery.take_stale(
            session, older_than_s=settings.ezq_sweep_stale_after, limit=settings_batch()
        )
    unpublished = publish_jobs(stale)
    report.redispatched = len(stale) - len(unpublished)
    report.published += [j for j in stale if j not in unpublished]
    # Webhook deliveries whose message was lost with the rest are sent again as soon as
    # lost jobs are; otherwise after the usual grace.
    report.webhooks = (
        republish_due_deliveries(grace_seconds=settings.ezq_redispatch_after)
        if messages_lost
        else republish_due_deliveries()
    )
    report.batches = finalize_ended()
    sweep_flow(settings)  # flow control: settle lost calls, forget old admissions
    # Imported here: the purge module reaches up to the CLI's output helpers.
    from service.ops.purge import purge_expired

    report.purged_conversations = purge_expired()  # EZQ_RETENTION_DAYS, when set
    if report.jobs:
        log.info(
            "sweep: took over %d jobs (%d failed), published %d parked, republished %d",
            report.taken_over,
            report.failed,
            report.parked,
            report.redispatched,
        )
    return report


def settings_batch() -> int:
    from service import constants as c

    return c.SWEEP_BATCH


def _take_over_expired(settings: Settings, report: SweepReport) -> None:
    again: list[uuid.UUID] = []
    wake: list[uuid.UUID | None] = []
    deliveries: list[uuid.UUID] = []
    with transaction() as session:
        expired = recovery.expired_leases(
            session, dead_after_s=settings.lease_seconds, limit=settings_batch()
        )
        for lease in expired:
            error_type = "lease_expired" if lease.holder_alive else "worker_lost"
            taken = queries.take_over(
                session,
                lease.job_id,
                error_type=error_type,
                max_attempts=settings.ezq_max_attempts,
            )
            if taken is None:
                continue
            metrics.attempt_lost(error_type, taken.job.model)
            log.warning(
                "[job=%s] attempt %d lost (%s); %s",
                lease.job_id,
                taken.job.attempts,
                error_type,
                "the job failed: it was its last attempt" if taken.failed else "running again",
            )
            if taken.failed:
                report.failed += 1
                wake.append(queries.next_waiting_job(session, taken.job.conversation_id))
                if taken.job.callback_url is not None:
                    view = views.job_view(session, lease.job_id)
                    webhook_outbox.add_for_job(session, taken.job, view)
                    deliveries += webhook_outbox.pending_ids_for_job(session, lease.job_id)
            else:
                again.append(lease.job_id)
    report.taken_over = len(again) + report.failed
    unpublished = publish_jobs([*again, *wake])
    report.published += [j for j in again if j not in unpublished]
    if deliveries:
        publish_deliveries(deliveries)

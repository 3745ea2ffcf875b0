"""SQL for keeping jobs moving: worker heartbeats, the sweep's turn, parked and stale jobs,
and dead letters. Callers own the transaction."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session

from service.db.models import DeadLetter
from service.db.row_checks import on_row
from service.db.turn_order import NOT_HELD_BACK

_HEARTBEAT = text(
    """
    WITH beat AS (
        INSERT INTO workers (id, hostname, pid, queue, started_at, heartbeat_at)
        VALUES (:id, :hostname, :pid, :queue, now(), now())
        ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), stopped_at = NULL
        RETURNING id
    )
    UPDATE jobs SET lease_expires_at = now() + make_interval(secs => :lease)
    WHERE id = ANY(:job_ids) AND """
    # The worker's own jobs by id, their state checked on the row (``row_checks``): with
    # the state in the WHERE and statistics taken when nothing ran, every beat read the
    # running jobs of every worker through their partial index.
    + on_row("status = 'running'")
    + """ AND lease_holder = (SELECT id FROM beat)
    """
)


def heartbeat(
    session: Session,
    *,
    worker_id: str,
    hostname: str,
    pid: int,
    queue: str,
    lease_seconds: float,
    job_ids: list[uuid.UUID],
) -> int:
    """Record that the worker is alive (and the queue it consumes) and renew its jobs'
    leases; one round trip.

    Returns how many leases were renewed.
    """
    result = session.execute(
        _HEARTBEAT,
        {
            "id": worker_id,
            "hostname": hostname,
            "pid": pid,
            "queue": queue,
            "lease": lease_seconds,
            "job_ids": job_ids,
        },
    )
    return int(getattr(result, "rowcount", 0) or 0)


def consumed_queues(session: Session, *, beat_within_s: float) -> list[str]:
    """The queues consumed by the workers that have beaten within ``beat_within_s`` and not
    stopped: the broker should hold the live jobs' messages on these."""
    rows = session.execute(
        text(
            "SELECT DISTINCT queue FROM workers WHERE queue IS NOT NULL"
            " AND stopped_at IS NULL AND heartbeat_at > now() - make_interval(secs => :s)"
        ),
        {"s": beat_within_s},
    )
    return sorted(str(queue) for queue in rows.scalars())


def worker_stopped(session: Session, worker_id: str) -> None:
    """Mark a worker that shut down cleanly, so its jobs need not wait for a missed beat."""
    session.execute(text("UPDATE workers SET stopped_at = now() WHERE id = :id"), {"id": worker_id})


@dataclass(frozen=True, slots=True)
class SweepTurn:
    """This process runs the sweep now; ``previous_run_at`` is when one last ran."""

    previous_run_at: datetime
    now: datetime

    @property
    def age_s(self) -> float:
        """Seconds since the previous run."""
        return (self.now - self.previous_run_at).total_seconds()

    def continuous_for(self, seconds: float) -> bool:
        """Whether the previous run was less than ``seconds`` ago: the database has been
        reachable recently enough that live workers have had time to beat."""
        return self.age_s < seconds


def take_sweep_turn(
    session: Session, *, name: str, every_s: float, worker: str
) -> SweepTurn | None:
    """Take the turn to run the sweep ``name``; None when another process ran it recently.

    The row lock is held until the caller's transaction ends, so two sweeps never overlap.
    """
    session.execute(
        text(
            "INSERT INTO sweep_runs (name, last_run_at) VALUES (:name, 'epoch')"
            " ON CONFLICT (name) DO NOTHING"
        ),
        {"name": name},
    )
    row = session.execute(
        text(
            """
            WITH prev AS (
                SELECT name, last_run_at FROM sweep_runs WHERE name = :name
                FOR UPDATE SKIP LOCKED
            )
            UPDATE sweep_runs s SET last_run_at = now(), last_worker = :worker
            FROM prev
            WHERE s.name = prev.name
              AND prev.last_run_at < now() - make_interval(secs => :every)
            RETURNING prev.last_run_at, now()
            """
        ),
        {"name": name, "every": every_s * 0.8, "worker": worker},
    ).first()
    if row is None:
        return None
    return SweepTurn(previous_run_at=row[0], now=row[1])


@dataclass(frozen=True, slots=True)
class ExpiredLease:
    job_id: uuid.UUID
    holder_alive: bool


def expired_leases(session: Session, *, dead_after_s: float, limit: int) -> list[ExpiredLease]:
    """Running jobs whose lease ran out, locked, and whether their worker still beats."""
    rows = session.execute(
        text(
            """
            SELECT j.id,
                   coalesce(w.stopped_at IS NULL
                            AND w.heartbeat_at > now() - make_interval(secs => :dead), false)
            FROM jobs j LEFT JOIN workers w ON w.id = j.lease_holder
            WHERE j.status = 'running' AND j.lease_expires_at < now()
            ORDER BY j.lease_expires_at
            LIMIT :limit
            FOR UPDATE OF j SKIP LOCKED
            """
        ),
        {"dead": dead_after_s, "limit": limit},
    ).all()
    return [ExpiredLease(job_id=r[0], holder_alive=bool(r[1])) for r in rows]


def parked_due(session: Session, *, limit: int) -> list[uuid.UUID]:
    """Due pending jobs with no message on the broker, not held back.

    They keep their flag until ``mark_published``: while the broker is down the flag stays
    set, so a job never looks published when it is not.
    """
    return list(session.execute(_PARKED_DUE, {"limit": limit}).scalars())


def _parked(throttle_reason: str) -> str:
    """Due parked jobs whose ``throttle_reason IS`` ``throttle_reason``, first by enqueue
    order."""
    return f"""
        (SELECT j.id, j.enqueue_seq FROM jobs j
         WHERE j.needs_publish AND j.throttle_reason IS {throttle_reason}
           AND j.status IN ('queued', 'retrying')
           AND j.dispatched_at <= now() AND {NOT_HELD_BACK}
         ORDER BY j.enqueue_seq
         LIMIT :limit)"""


# Parked jobs that were throttled and those that were not, each read through its own index
# of dispatch times (``ix_jobs_throttled_dispatch``, ``ix_jobs_pending_dispatch``), then
# the first ``limit`` of both by enqueue order.
_PARKED_DUE = text(
    f"""
    SELECT p.id FROM ({_parked("NULL")}
        UNION ALL{_parked("NOT NULL")}
    ) AS p
    ORDER BY p.enqueue_seq
    LIMIT :limit
    """
)


def mark_published(session: Session, job_ids: list[uuid.UUID]) -> None:
    """Clear the flag of parked jobs whose message is now on the broker.

    A job that its message already reached and that was parked again meanwhile (throttled:
    its ``dispatched_at`` moved to the future) keeps its flag: it has no message any more.
    """
    if job_ids:
        session.execute(
            text(
                "UPDATE jobs SET needs_publish = false, dispatched_at = now()"
                " WHERE id = ANY(:ids) AND needs_publish AND dispatched_at <= now()"
            ),
            {"ids": job_ids},
        )


# A claim Postgres committed whose answer the worker lost (its connection was cut between
# the two) leaves the job running under that worker's lease with no thread of it on the
# job. The worker, once no claim of its own is under way, undoes such claims: the open
# attempt (which made no call) and its flow-control reservation are deleted, and the job
# is pending again as it was before the claim, flagged for publishing.
_UNDO_LOST_CLAIMS = text(
    """
    WITH lost AS (
        SELECT id, attempts FROM jobs
        WHERE status = 'running' AND lease_holder = :holder AND NOT (id = ANY(:keep))
        FOR UPDATE
    ), attempt_gone AS (
        DELETE FROM job_attempts a USING lost
        WHERE a.job_id = lost.id AND a.attempt = lost.attempts AND a.finished_at IS NULL
    ), reservation_gone AS (
        DELETE FROM flow_admissions f USING lost
        WHERE f.job_id = lost.id AND f.attempt = lost.attempts
    )
    UPDATE jobs j
       SET status = CASE WHEN lost.attempts > 1 THEN 'retrying' ELSE 'queued' END,
           attempts = lost.attempts - 1,
           started_at = CASE WHEN lost.attempts > 1 THEN j.started_at END,
           lease_expires_at = NULL, lease_holder = NULL, needs_publish = true
      FROM lost
     WHERE j.id = lost.id
    RETURNING j.id
    """
)


def undo_lost_claims(
    session: Session, *, holder: str, keep: Iterable[uuid.UUID]
) -> list[uuid.UUID]:
    """Undo the claims of the worker ``holder`` whose jobs it does not run (``keep``: those
    it runs, or may have called the gateway for); return their jobs. One round trip.

    Only the worker itself may call this, at a moment when none of its claims is under way:
    then a job running under its lease and not in ``keep`` is one whose claim it lost."""
    rows = session.execute(_UNDO_LOST_CLAIMS, {"holder": holder, "keep": list(keep)})
    return list(rows.scalars())


def take_stale(session: Session, *, older_than_s: float, limit: int) -> list[uuid.UUID]:
    """Pending jobs published more than ``older_than_s`` ago that have not started.

    Each is marked published now, so it is picked at most once per window.
    """
    stmt = text(
        f"""
        UPDATE jobs SET dispatched_at = now()
        WHERE id IN (
            SELECT j.id FROM jobs j
            WHERE j.status IN ('queued', 'retrying') AND NOT j.needs_publish
              AND j.dispatched_at < now() - make_interval(secs => :age)
              AND {NOT_HELD_BACK}
            ORDER BY j.enqueue_seq
            LIMIT :limit
            FOR UPDATE SKIP LOCKED
        )
        RETURNING id
        """
    )
    return list(session.execute(stmt, {"age": older_than_s, "limit": limit}).scalars())


def messages_expected(session: Session) -> int:
    """How many messages the broker should hold on the queues the workers consume: one per
    published pending job that is not held back, one per running job (acknowledged only
    when its attempt ends), and one per pending webhook delivery that was published
    (delivery messages share the queues, so without them a delivery's message would hide a
    lost job's)."""
    count = session.execute(
        text(
            f"""
            SELECT (SELECT count(*) FROM jobs j
                    WHERE (j.status IN ('queued', 'retrying') AND NOT j.needs_publish
                           AND {NOT_HELD_BACK})
                       OR j.status = 'running')
                 + (SELECT count(*) FROM webhook_deliveries d
                    WHERE d.status = 'pending' AND d.dispatched_at IS NOT NULL)
            """
        )
    ).scalar_one()
    return int(count)


def mark_unpublished(session: Session, job_ids: list[uuid.UUID]) -> None:
    """Flag pending jobs whose message could not be published, for the sweep."""
    session.execute(_MARK_UNPUBLISHED, {"ids": job_ids})


# The jobs found by id, their state checked on the row (``row_checks``).
_MARK_UNPUBLISHED = text(
    "UPDATE jobs SET needs_publish = true"
    " WHERE id = ANY(:ids) AND " + on_row("status IN ('queued', 'retrying')")
)


# --- dead letters ----------------------------------------------------------------------


def add_dead_letter(
    session: Session,
    *,
    raw: bytes,
    reason: str,
    queue: str | None,
    task_name: str | None,
    message_id: str | None,
    worker: str | None,
    max_bytes: int,
) -> int:
    """Keep a message no worker could run; the raw bytes are capped at ``max_bytes``."""
    row = DeadLetter(
        raw=raw[:max_bytes],
        raw_bytes=len(raw),
        reason=reason,
        queue=queue,
        task_name=task_name,
        message_id=message_id,
        worker=worker,
    )
    session.add(row)
    session.flush()
    return row.id


def dead_letters(
    session: Session, *, since: datetime | None, until: datetime | None = None, limit: int
) -> list[dict[str, Any]]:
    """The newest dead letters first (received in [since, until)), as plain dictionaries."""
    stmt = select(DeadLetter).order_by(DeadLetter.id.desc()).limit(limit)
    if since is not None:
        stmt = stmt.where(DeadLetter.received_at >= since)
    if until is not None:
        stmt = stmt.where(DeadLetter.received_at < until)
    return [
        {
            "id": d.id,
            "received_at": d.received_at.isoformat(),
            "queue": d.queue,
            "task_name": d.task_name,
            "message_id": d.message_id,
            "reason": d.reason,
            "worker": d.worker,
            "raw_bytes": d.raw_bytes,
            "raw": d.raw,
        }
        for d in session.scalars(stmt)
    ]


def purge_dead_letters(session: Session, *, before: datetime | None, ids: list[int] | None) -> int:
    """Delete dead letters received before ``before`` and/or with the given ids."""
    stmt = delete(DeadLetter)
    if before is not None:
        stmt = stmt.where(DeadLetter.received_at < before)
    if ids:
        stmt = stmt.where(DeadLetter.id.in_(ids))
    result = session.execute(stmt)
    return int(getattr(result, "rowcount", 0) or 0)

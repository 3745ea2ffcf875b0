"""What is happening now, read from Postgres: the truth, not the broker's view.

Feeds ``ezq status`` and the Prometheus gauges. Callers own the transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

FAILURE_WINDOW_S = 3600.0


@dataclass(frozen=True, slots=True)
class Backlog:
    """Unfinished jobs of one tenant and model."""

    tenant: str | None
    model: str
    queued: int
    running: int
    retrying: int
    # Queued, but held back by an earlier unfinished turn of the same conversation.
    throttled: int
    oldest_queued_at: datetime | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    now: datetime
    backlog: list[Backlog]
    failures_last_hour: dict[str, int]  # error_type -> failed jobs
    webhook_backlog: int  # pending deliveries
    oldest_webhook_at: datetime | None
    # When a worker last ran the sweep (None: never on this database). Nothing else says
    # that no worker sweeps (EZQ_SWEEP_INTERVAL=0 on all of them): recovery stops quietly.
    last_sweep_at: datetime | None = None

    def total(self, name: str) -> int:
        return sum(int(getattr(row, name)) for row in self.backlog)

    @property
    def oldest_queued_at(self) -> datetime | None:
        times = [row.oldest_queued_at for row in self.backlog if row.oldest_queued_at]
        return min(times) if times else None


_BACKLOG = text(
    """
    SELECT j.tenant, j.model,
           count(*) FILTER (WHERE j.status = 'queued') AS queued,
           count(*) FILTER (WHERE j.status = 'running') AS running,
           count(*) FILTER (WHERE j.status = 'retrying') AS retrying,
           count(*) FILTER (WHERE j.status = 'queued' AND (j.throttle_reason IS NOT NULL
               OR EXISTS (
                   SELECT 1 FROM jobs e
                   WHERE e.conversation_id = j.conversation_id
                     AND e.enqueue_seq < j.enqueue_seq
                     AND e.status NOT IN ('succeeded', 'failed', 'cancelled')))) AS throttled,
           min(j.created_at) FILTER (WHERE j.status = 'queued') AS oldest_queued_at
    FROM jobs j
    WHERE j.status IN ('queued', 'running', 'retrying')
    GROUP BY j.tenant, j.model
    ORDER BY count(*) DESC, j.tenant NULLS FIRST, j.model
    """
)
_FAILURES = text(
    """
    SELECT coalesce(error_type, 'unknown'), count(*) FROM jobs
    WHERE status = 'failed' AND finished_at > now() - make_interval(secs => :window)
    GROUP BY 1 ORDER BY 2 DESC, 1
    """
)
_WEBHOOKS = text(
    "SELECT now(), count(*), min(created_at),"
    " (SELECT last_run_at FROM sweep_runs WHERE name = 'sweep' AND last_worker IS NOT NULL)"
    " FROM webhook_deliveries WHERE status = 'pending'"
)


def snapshot(session: Session) -> Snapshot:
    """Backlog per tenant and model, failures of the last hour, the webhook backlog and
    when the sweep last ran."""
    backlog = [Backlog(*row) for row in session.execute(_BACKLOG).all()]
    failures: dict[str, Any] = {
        error_type: count
        for error_type, count in session.execute(_FAILURES, {"window": FAILURE_WINDOW_S})
    }
    now, pending, oldest, last_sweep_at = session.execute(_WEBHOOKS).one()
    return Snapshot(now, backlog, failures, int(pending), oldest, last_sweep_at)

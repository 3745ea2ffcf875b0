"""The step when a gateway call ends: settle its reservation, wake throttled jobs."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from service import constants as c
from service import metrics
from service.config import Settings, get_settings
from service.db import flow as flow_db
from service.db.session import transaction
from service.flow.admission import Admission
from service.webhooks.tasks import publish_deliveries
from service.worker.dispatch import publish_jobs

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Settlement:
    """What the end of one admitted call owes flow control.

    ``reserved``: the claim wrote the call's reservation, to settle to its real use.
    ``wake``: throttled jobs were waiting at claim, to wake now that a capacity frees.
    ``done``: it was settled in the transaction that recorded the call's outcome."""

    reserved: bool
    wake: bool
    done: bool = False

    @classmethod
    def of(cls, admission: Admission) -> Settlement:
        return cls(reserved=admission.reserve, wake=admission.throttled_waiting)

    @property
    def owed(self) -> bool:
        """The call's end has something to settle or throttled jobs to wake."""
        return self.reserved or self.wake


def settle_in(
    session: Session, settlement: Settlement | None, job_id: uuid.UUID, attempt: int
) -> list[uuid.UUID]:
    """Settle the call in the caller's transaction (the one that writes its usage, so that
    a budget counts the call once: reserved before the commit, spent after it). Returns the
    throttled jobs to publish once it commits."""
    if settlement is None:
        return []
    # The ended call's scope first: its end frees what held them (``flow_db.wake_throttled``).
    aging = get_settings().ezq_priority_aging
    if settlement.reserved:
        return flow_db.settle(session, job_id, attempt, wake=c.FLOW_WAKE, aging_s=aging)
    if settlement.wake:
        return flow_db.wake_throttled(session, limit=c.FLOW_WAKE, scope_of=job_id, aging_s=aging)
    return []


def release(job_id: uuid.UUID, attempt: int, settlement: Settlement) -> None:
    """Settle a call whose outcome was not recorded with its settlement (it raised, or the
    database was away), in a transaction of its own, and publish the best throttled jobs. A
    failure here only delays them until the sweep's recheck."""
    if settlement.done or not settlement.owed:
        return
    try:
        with transaction() as session:
            woken = settle_in(session, settlement, job_id, attempt)
    except SQLAlchemyError:
        log.warning("[job=%s] could not settle the call; the sweep wakes throttled jobs", job_id)
        return
    settlement.done = True
    publish_jobs(woken)


def after_admission(admission: Admission) -> None:
    """After the claim's commit: the next turns and webhooks of jobs failed over budget,
    and their count in the job metrics."""
    for job in admission.ended:
        metrics.job_ended_at_claim(job)
    if admission.deliveries:
        publish_deliveries(admission.deliveries)
    publish_jobs(admission.next_turns)


def publish_due_throttled(settings: Settings) -> float | None:
    """Publish the jobs held by a rate window that are due (their ``throttled_until``), each
    by one worker of all; return the seconds until the next one is due (None: none waits).
    Those the broker refuses are flagged again, due at once. Jobs held with no time are
    woken by a call's end, or by the sweep's recheck."""
    with transaction() as session:
        woken, next_in = flow_db.wake_due(session, limit=c.SWEEP_BATCH)
    publish_jobs(woken)
    if woken:
        log.debug("published %d due throttled job(s)", len(woken))
    if len(woken) >= c.SWEEP_BATCH:
        return 0.0  # more may be overdue: the next round at once
    return next_in


def sweep_flow(settings: Settings) -> int:
    """The sweep's flow step: settle calls lost with their worker (their reservation goes)
    and forget settled admissions older than an hour (or two windows, if longer)."""
    with transaction() as session:
        settled = flow_db.settle_lost(session, limit=c.SWEEP_BATCH)
        keep = max(2 * settings.ezq_flow_window, c.FLOW_ADMISSIONS_KEEP_S)
        flow_db.prune_admissions(session, older_than_s=keep)
    return settled

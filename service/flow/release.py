"""The step when a gateway call ends: settle its reservation, wake throttled jobs."""

from __future__ import annotations

import logging
import uuid

from sqlalchemy.exc import SQLAlchemyError

from service import constants as c
from service.config import Settings
from service.db import flow as flow_db
from service.db.session import transaction
from service.flow.admission import Admission
from service.webhooks.tasks import publish_deliveries
from service.worker.dispatch import publish_jobs

log = logging.getLogger(__name__)


def release(job_id: uuid.UUID, attempt: int, settings: Settings) -> None:
    """Settle the call's tokens to its real usage and publish the best throttled jobs: a
    capacity has just freed. A failure here only delays them until the sweep's recheck."""
    try:
        with transaction() as session:
            woken = flow_db.settle(session, job_id, attempt, wake=c.FLOW_WAKE)
    except SQLAlchemyError:
        log.warning("[job=%s] could not settle the call; the sweep wakes throttled jobs", job_id)
        return
    publish_jobs(woken)


def after_admission(admission: Admission) -> None:
    """After the claim's commit: the next turns and webhooks of jobs failed over budget."""
    if admission.deliveries:
        publish_deliveries(admission.deliveries)
    publish_jobs(admission.next_turns)


def sweep_flow(settings: Settings) -> int:
    """The sweep's flow step: settle calls lost with their worker (their reservation goes,
    their real cost, if recorded, is spent) and forget settled admissions older than an hour
    (or two windows, if longer)."""
    with transaction() as session:
        settled = flow_db.settle_lost(session, limit=c.SWEEP_BATCH)
        keep = max(2 * settings.ezq_flow_window, c.FLOW_ADMISSIONS_KEEP_S)
        flow_db.prune_admissions(session, older_than_s=keep)
    return settled

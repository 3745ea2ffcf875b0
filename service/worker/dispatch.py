"""The one way run messages reach the broker after a commit.

Whatever could not be published (the broker is down) is flagged ``needs_publish`` in the
database, and the sweep publishes it once the broker answers again.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable

from sqlalchemy.exc import SQLAlchemyError

from service.db import recovery
from service.db.session import transaction
from service.worker.app import publish_job

log = logging.getLogger(__name__)


def publish_jobs(job_ids: Iterable[uuid.UUID | None]) -> list[uuid.UUID]:
    """Publish a run message for each committed job; return those left to the sweep."""
    unpublished: list[uuid.UUID] = []
    problem: Exception | None = None
    for job_id in job_ids:
        if job_id is None:
            continue
        if unpublished:  # the broker just failed: do not wait on it again for each job
            unpublished.append(job_id)
            continue
        try:
            publish_job(job_id)
        except Exception as exc:  # any publish failure leaves the job to the sweep
            problem = exc
            unpublished.append(job_id)
    if unpublished:
        log.warning(
            "broker unavailable (%s): %d job(s) stored, to be dispatched when it is back",
            type(problem).__name__,
            len(unpublished),
        )
        try:
            with transaction() as session:
                recovery.mark_unpublished(session, unpublished)
        except SQLAlchemyError:
            # Both the broker and the database are down: the sweep's stale window
            # republishes these jobs once both are back.
            log.warning("could not flag %d unpublished job(s) for the sweep", len(unpublished))
    return unpublished


def republish(job_ids: list[uuid.UUID]) -> list[uuid.UUID]:
    """Publish the run messages of jobs flagged ``needs_publish`` and clear the flag of
    those that reached the broker; return them (the others keep their flag for the sweep)."""
    unpublished = set(publish_jobs(job_ids))
    published = [job_id for job_id in job_ids if job_id not in unpublished]
    if published:
        with transaction() as session:
            recovery.mark_published(session, published)
    return published

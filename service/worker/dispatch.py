"""The one way run messages reach the broker after a commit.

Whatever could not be published (the broker is down) is flagged ``needs_publish`` in the
database, and the sweep publishes it once the broker answers again.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Sequence

from sqlalchemy.exc import SQLAlchemyError

from service.db import recovery
from service.db.session import transaction
from service.worker.app import publish_job

log = logging.getLogger(__name__)


def publish_until_refused(
    ids: Sequence[uuid.UUID], publish: Callable[[uuid.UUID], None]
) -> tuple[list[uuid.UUID], Exception | None]:
    """Publish a message for each id in turn until the broker refuses one; return those left
    (that one and the rest, not tried: each would wait on the broker again, seconds apiece)
    and why."""
    for index, message_id in enumerate(ids):
        try:
            publish(message_id)
        except Exception as exc:  # any publish failure leaves the rest to the sweep
            return list(ids[index:]), exc
    return [], None


def publish_jobs(job_ids: Iterable[uuid.UUID | None]) -> list[uuid.UUID]:
    """Publish a run message for each committed job; return those left to the sweep."""
    unpublished, problem = publish_until_refused(
        [job_id for job_id in job_ids if job_id is not None], publish_job
    )
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

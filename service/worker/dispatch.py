"""The one way messages reach the broker after a commit: jobs' run messages, and (through
``publish_or_flag``) webhook deliveries'.

Whatever could not be published (the broker is down) is flagged in the database (a job's
``needs_publish``, a delivery's ``dispatched_at`` cleared), and the sweep publishes it once
the broker answers again.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Sequence

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from service.db import recovery
from service.db.session import transaction
from service.worker.app import publish_job

log = logging.getLogger(__name__)


def publish_or_flag(
    ids: Sequence[uuid.UUID],
    publish: Callable[[uuid.UUID], None],
    *,
    flag: Callable[[Session, list[uuid.UUID]], None],
    noun: str,
    then: str = "the sweep publishes them when it is back",
) -> list[uuid.UUID]:
    """Publish a message for each id in turn; return those left to the sweep.

    Once the broker refuses one, the rest are not tried (each would wait on the broker
    again, seconds apiece: minutes under the sweep's lock), one warning counts them, and
    ``flag`` marks them unpublished in one transaction, for the sweep to publish when the
    broker is back. With the database down too, the sweep finds them by age instead."""
    for index, message_id in enumerate(ids):
        try:
            publish(message_id)
        except Exception as exc:  # any publish failure leaves the rest to the sweep
            left, problem = list(ids[index:]), type(exc).__name__
            break
    else:
        return []
    log.warning("broker unavailable (%s): %d %s stored, %s", problem, len(left), noun, then)
    try:
        with transaction() as session:
            flag(session, left)
    except SQLAlchemyError:
        log.warning("could not flag %d unpublished %s for the sweep", len(left), noun)
    return left


def publish_jobs(job_ids: Iterable[uuid.UUID | None]) -> list[uuid.UUID]:
    """Publish a run message for each committed job; return those left to the sweep."""
    return publish_or_flag(
        [job_id for job_id in job_ids if job_id is not None],
        publish_job,
        flag=recovery.mark_unpublished,
        noun="job(s)",
        then="to be dispatched when it is back",
    )


def republish(job_ids: list[uuid.UUID]) -> list[uuid.UUID]:
    """Publish the run messages of jobs flagged ``needs_publish`` and clear the flag of
    those that reached the broker; return them (the others keep their flag for the sweep)."""
    unpublished = set(publish_jobs(job_ids))
    published = [job_id for job_id in job_ids if job_id not in unpublished]
    if published:
        with transaction() as session:
            recovery.mark_published(session, published)
    return published

"""``ezq purge`` and the retention sweep: delete old content, keep usage and cost exact.

See ``service.db.purge`` for what is deleted. Batches of conversations are purged in
separate short transactions, so a large purge never holds locks for long and can be
stopped at any point; Celery's stored results for the purged jobs (which hold the reply)
are deleted from the result backend after each batch commits.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from service.config import get_settings
from service.db import purge as sql
from service.db.session import transaction

log = logging.getLogger(__name__)

BATCH = 500  # conversations per transaction


@dataclass
class PurgeResult:
    dry_run: bool
    counts: sql.Counts
    blocked: int  # conversations selected that cannot be purged yet (unfinished jobs)


def _forget_results(job_ids: list[uuid.UUID]) -> None:
    """Delete Celery's stored results of these jobs (they hold the reply) from Redis."""
    url = get_settings().result_backend
    if not job_ids or not url.startswith(("redis://", "rediss://", "redis+socket://")):
        return
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=5)
        with client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.delete(f"celery-task-meta-{job_id}")
            pipe.execute()
    except redis.RedisError as exc:
        # The database is purged already; results expire by themselves within a week.
        log.warning("purge: could not delete stored task results: %s", type(exc).__name__)


def purge(
    selection: sql.Selection, *, dry_run: bool = False, max_batches: int | None = None
) -> PurgeResult:
    """Purge what ``selection`` names (or, with ``dry_run``, only count it)."""
    if dry_run:
        with transaction() as session:
            return PurgeResult(True, sql.would_purge(session, selection), 0)
    total = sql.Counts()
    batches = 0
    while max_batches is None or batches < max_batches:
        with transaction() as session:
            done = sql.purge_batch(session, selection, batch=BATCH)
        batches += 1
        total.add(done)
        _forget_results(done.job_ids or [])
        if done.conversations < BATCH:
            break
    with transaction() as session:
        left = sql.blocked(session, selection)
    return PurgeResult(False, total, left)


def purge_expired() -> int:
    """The sweep's share: purge what is older than ``EZQ_RETENTION_DAYS`` (if set), a few
    batches per run; return how many conversations were purged."""
    days = get_settings().ezq_retention_days
    if days is None:
        return 0
    cutoff = datetime.now(UTC) - timedelta(days=days)
    result = purge(sql.Selection(before=cutoff), max_batches=4)
    if result.counts.conversations:
        log.info(
            "retention: purged %d conversations (%d jobs) older than %d days",
            result.counts.conversations,
            result.counts.jobs,
            days,
        )
    return result.counts.conversations

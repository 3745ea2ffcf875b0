"""``ezq purge`` and the retention sweep: delete old content, keep usage and cost exact.

See ``service.db.purge`` for what is deleted. Batches of conversations are purged in
separate short transactions, so a large purge never holds locks for long and can be
stopped at any point; Celery's stored results and the live token streams of the purged
jobs (both hold the reply) are deleted from Redis after each batch commits. Then the
content of batch input files none of whose requests is needed any more (every line
purged, or the file never used) is erased, a few files per transaction.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from service.config import REDIS_SCHEMES, get_settings
from service.db import purge as sql
from service.db.session import transaction

log = logging.getLogger(__name__)

BATCH = 500  # conversations per transaction
FILE_BATCH = 20  # batch input files per transaction (up to EZQ_BATCH_MAX_FILE_BYTES each)


@dataclass
class PurgeResult:
    dry_run: bool
    counts: sql.Counts
    blocked: int  # conversations selected that cannot be purged yet (unfinished jobs)
    # Batch input files of the tenant or conversation whose content is kept: a batch made
    # from it has not ended, or one of its lines is not purged (not ended, or outside the
    # selection: with --conversation, the file's other lines).
    held_files: int = 0


def forget_job_keys(job_ids: list[uuid.UUID] | list[str]) -> None:
    """Delete what Redis holds of these jobs' content: Celery's stored results (the reply,
    on the result backend) and their live token streams (``ezq:live:<id>``, the reply as
    it arrived), instead of leaving both to expire."""
    from service.live.events import stream_key

    settings = get_settings()
    places: dict[str, list[str]] = {}
    if settings.result_backend.startswith(REDIS_SCHEMES):
        places[settings.result_backend] = [f"celery-task-meta-{i}" for i in job_ids]
    if settings.live_redis_url:
        places.setdefault(settings.live_redis_url, []).extend(stream_key(i) for i in job_ids)
    if not job_ids:
        return
    import redis

    for url, keys in places.items():
        try:
            client = redis.Redis.from_url(url, socket_timeout=5)
            with client.pipeline(transaction=False) as pipe:
                for start in range(0, len(keys), 1000):
                    pipe.delete(*keys[start : start + 1000])
                pipe.execute()
        except redis.RedisError as exc:
            # The database is purged already; results expire after EZQ_RESULT_EXPIRES and
            # live streams after EZQ_LIVE_TTL by themselves.
            log.warning("purge: could not delete jobs' keys from Redis: %s", type(exc).__name__)


def purge(
    selection: sql.Selection, *, dry_run: bool = False, max_batches: int | None = None
) -> PurgeResult:
    """Purge what ``selection`` names (or, with ``dry_run``, only count it)."""
    if dry_run:
        # What a real run would do, and what it would leave alone and say so.
        with transaction() as session:
            counts = sql.would_purge(session, selection)
            blocked = sql.blocked(session, selection)
            # Those of the tenant or conversation it would not erase (none counted for a
            # selection by age alone, whose erasures are all in ``counts.files``).
            held = max(0, sql.held_files(session, selection) - counts.files)
        return PurgeResult(True, counts, blocked, held)
    total = sql.Counts()
    batches = 0
    while max_batches is None or batches < max_batches:
        with transaction() as session:
            done = sql.purge_batch(session, selection, batch=BATCH)
        batches += 1
        total.add(done)
        forget_job_keys(done.job_ids or [])
        if done.conversations < BATCH:
            break
    # Files last: the lines of their batches are purged by now.
    batches = 0
    while max_batches is None or batches < max_batches:
        with transaction() as session:
            picked, erased = sql.purge_files(session, selection, batch=FILE_BATCH)
        batches += 1
        total.files += erased
        if picked < FILE_BATCH:
            break
    with transaction() as session:
        left = sql.blocked(session, selection)
        held = sql.held_files(session, selection)
    return PurgeResult(False, total, left, held)


def purge_expired() -> int:
    """The sweep's share: purge what is older than ``EZQ_RETENTION_DAYS`` (if set), a few
    batches per run; return how many conversations were purged."""
    days = get_settings().ezq_retention_days
    if days is None:
        return 0
    cutoff = datetime.now(UTC) - timedelta(days=days)
    result = purge(sql.Selection(before=cutoff), max_batches=4)
    if result.counts.conversations or result.counts.files:
        log.info(
            "retention: purged %d conversations (%d jobs) and %d batch files older than %d days",
            result.counts.conversations,
            result.counts.jobs,
            result.counts.files,
            days,
        )
    return result.counts.conversations

"""Reading a job's live events from Python: ``stream_job`` (also behind ``ezq enqueue
--follow``). The HTTP route (``service.api.events_route``) does the same with async I/O."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import redis

from service import constants as c
from service.config import get_settings
from service.db.queries import Tenants
from service.errors import JobNotFound
from service.live.events import (
    ENDED_STATUSES,
    Follower,
    LiveEvent,
    final_event,
    stream_key,
)

# Entries read per round trip; a late reader of a long reply catches up in a few.
READ_COUNT = 500


def read_timeout(block_s: float) -> float:
    """The socket timeout of a reader that blocks up to ``block_s`` in XREAD."""
    return block_s + c.LIVE_READ_MARGIN_S


def live_reader(url: str, block_s: float) -> redis.Redis:
    """A client whose reads outlast an XREAD that blocks up to ``block_s``."""
    return redis.Redis.from_url(url, socket_timeout=read_timeout(block_s))


def entries_of(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The entries of a one-stream ``XREAD`` reply (RESP2 list or RESP3 map)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return list(next(iter(reply.values()))[0])
    return list(reply[0][1])


def ended_view(job_id: uuid.UUID, tenants: Tenants) -> dict[str, Any] | None:
    """The job's view if it has ended, else None; JobNotFound outside ``tenants``."""
    from service.producer import get_job

    view = get_job(job_id, tenants=tenants)
    return view if view["status"] in ENDED_STATUSES else None


def stream_job(
    job_id: uuid.UUID | str,
    *,
    last_event_id: str | None = None,
    tenants: Tenants = None,
) -> Iterator[LiveEvent]:
    """Yield the job's live events until its final one, then stop.

    ``LiveEvent`` objects: ``delta`` (``payload``: ``attempt``, and ``content``,
    ``reasoning``, ``tool_calls`` fragments as received), ``attempt_restarted`` (drop the
    text so far: attempt ``payload["attempt"]`` starts over), then one of
    ``job.succeeded`` / ``job.failed`` / ``job.cancelled`` whose ``payload`` is the webhook
    body. What was produced before the call is yielded first; ``last_event_id`` (an
    event's ``id``) resumes after that event. A job that has ended yields its final event
    only. Raises ``JobNotFound`` for an unknown job (or one outside ``tenants``), and for
    an id that is not a UUID.
    """
    try:
        the_id = uuid.UUID(str(job_id))
    except ValueError:
        # A malformed id is an unknown job, as `GET /v1/jobs/{id}/events` answers it.
        raise JobNotFound(job_id) from None
    view = ended_view(the_id, tenants)
    if view is not None:
        yield final_event(view)
        return
    settings = get_settings()
    url = settings.live_redis_url
    client = live_reader(url, settings.ezq_live_heartbeat) if url else None
    follower = Follower(last_event_id)
    key = stream_key(the_id)
    try:
        while True:
            events: list[LiveEvent] = []
            if client is None:
                time.sleep(settings.ezq_live_heartbeat)  # live tokens off: the end only
            else:
                try:
                    reply = client.xread(
                        {key: follower.last_id},
                        count=READ_COUNT,
                        block=int(settings.ezq_live_heartbeat * 1000),
                    )
                except redis.RedisError:
                    # Redis is down: the end still comes from Postgres.
                    time.sleep(settings.ezq_live_heartbeat)
                    reply = None
                events = follower.take(entries_of(reply))
            yield from events
            if follower.done:
                return
            if not events and (view := ended_view(the_id, tenants)) is not None:
                # Ended without a final entry (taken over by the sweep, or the stream expired).
                yield final_event(view)
                return
    finally:
        if client is not None:
            client.close()

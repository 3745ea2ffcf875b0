"""``GET /v1/jobs/{id}/events``: a job's live events as Server-Sent Events.

Async end to end: an open listener is a coroutine blocked in one ``XREAD`` on the job's
stream (one Redis connection from the process's pool), never a thread. Postgres is asked
only at the start, then once per quiet heartbeat for an end that left no final entry (a
job taken over and failed by the sweep, an expired stream), and once a heartbeat whether
the caller's key still works and still sees the job's tenant.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import redis
import redis.asyncio as aioredis
from fastapi import APIRouter, Header, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from service.api.auth import Caller
from service.config import get_settings
from service.errors import JobNotFound
from service.keys.principal import Principal
from service.live.events import ENDED_STATUSES, Follower, final_event, stream_key
from service.live.follow import READ_COUNT, ended_view, entries_of, read_timeout

router = APIRouter()

_clients: dict[str, aioredis.Redis] = {}

# Sent first, so that proxies and clients see the stream open before the first delta, and
# EventSource reconnects after 2 s with Last-Event-ID.
_OPENING = b"retry: 2000\n\n"
_KEEP_ALIVE = b": keep-alive\n\n"

EVENTS_DOC = """A job's live events, as Server-Sent Events (`text/event-stream`):

- `delta`: `{"attempt", "content"?, "reasoning"?, "tool_calls"?}`, fragments of the reply
  as the worker receives them (batched about every 50 ms);
- `attempt_restarted`: `{"attempt"}`, an attempt broke and a new one starts: drop the text
  so far;
- `job.succeeded`, `job.failed` or `job.cancelled`: the webhook body (`{"type",
  "timestamp", "data": job}`), then the stream ends.

Each event has an `id:`; send the last one as `Last-Event-ID` to resume after it. A late
client gets what was produced first; a job that has ended answers with its final event
only. `: keep-alive` comments are sent when nothing happens for EZQ_LIVE_HEARTBEAT.
"""


# One event (OpenAPI before 3.2 describes each event of a stream with ``schema``).
_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "event", "data"],
    "properties": {
        "id": {"type": "string", "description": "Send it as Last-Event-ID to resume after."},
        "event": {
            "type": "string",
            "enum": ["delta", "attempt_restarted", "job.succeeded", "job.failed", "job.cancelled"],
        },
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
}


class _LiveOff(Exception):
    """EZQ_LIVE_REDIS_URL is off: listeners get the final event only."""


def _client(url: str) -> aioredis.Redis:
    # One pool per process (uvicorn runs one event loop per process); its reads outlast
    # the XREAD block, so that a quiet stream is not taken for Redis being down.
    client = _clients.get(url)
    if client is None:
        timeout = read_timeout(get_settings().ezq_live_heartbeat)
        client = _clients[url] = aioredis.Redis.from_url(url, socket_timeout=timeout)
    return client


def _key_still_valid(principal: Principal, tenant: str | None) -> bool:
    from service.db.session import transaction
    from service.keys.store import still_valid

    with transaction() as session:
        return still_valid(session, principal, tenant=tenant)


async def _events(
    job_id: uuid.UUID, principal: Principal, job_tenant: str | None, last_event_id: str | None
) -> AsyncIterator[bytes]:
    settings = get_settings()
    url = settings.live_redis_url
    follower = Follower(last_event_id)
    key = stream_key(job_id)
    tenants = principal.tenants
    block_ms = int(settings.ezq_live_heartbeat * 1000)
    key_checked = time.monotonic()
    yield _OPENING
    while True:
        if time.monotonic() - key_checked >= settings.ezq_live_heartbeat:
            # A key revoked or expired while its stream is open, or whose tenants no longer
            # include the job's, ends the stream within a heartbeat: the client's
            # reconnection then gets the 401 (or 404) any request gets.
            if not await run_in_threadpool(_key_still_valid, principal, job_tenant):
                return
            key_checked = time.monotonic()
        events = []
        try:
            if url is None:
                raise _LiveOff
            reply = await _client(url).xread(
                {key: follower.last_id}, count=READ_COUNT, block=block_ms
            )
            events = follower.take(entries_of(reply))
        except (_LiveOff, redis.RedisError):
            # Live tokens off, or Redis down: the end still comes from Postgres.
            await asyncio.sleep(settings.ezq_live_heartbeat)
        for event in events:
            yield event.sse()
        if follower.done:
            return
        if not events:
            view = await run_in_threadpool(ended_view, job_id, tenants)
            if view is not None:
                yield final_event(view).sse()
                return
            yield _KEEP_ALIVE


@router.get(
    "/v1/jobs/{job_id}/events",
    response_model=None,
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The event stream.",
            "content": {"text/event-stream": {"schema": _EVENT_SCHEMA}},
        }
    },
    description=EVENTS_DOC,
)
def job_events(
    job_id: str,
    principal: Caller,
    last_event_id: Annotated[
        str | None, Header(description="The `id` of the last event received: resume after it.")
    ] = None,
    last_event_id_query: Annotated[
        str | None,
        Query(
            alias="lastEventId",
            description="The same as `Last-Event-ID`, for EventSource polyfills that send it"
            " in the query string on reconnect; the header wins when both are given.",
        ),
    ] = None,
) -> StreamingResponse:
    """Stream the job's live events (see the description)."""
    from service.producer import get_job

    last_event_id = last_event_id if last_event_id is not None else last_event_id_query
    try:
        the_id = uuid.UUID(job_id)
    except ValueError:
        raise JobNotFound(job_id) from None
    view = get_job(the_id, tenants=principal.tenants)  # JobNotFound outside the key's tenants
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if view["status"] in ENDED_STATUSES:
        body: Any = iter([final_event(view).sse()])
    else:
        body = _events(the_id, principal, view["tenant"], last_event_id)
    return StreamingResponse(body, media_type="text/event-stream", headers=headers)

"""The event a webhook carries, in the Standard Webhooks shape.

``{"type": "job.succeeded", "timestamp": "...Z", "data": {...the job's JSON view...}}``,
serialised once when the job ends; every attempt sends exactly that text.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

EVENT_TYPES = {
    "succeeded": "job.succeeded",
    "failed": "job.failed",
    "cancelled": "job.cancelled",
}


def event_type_for(job_status: str) -> str:
    """The event type for a job that ended with ``job_status``."""
    try:
        return EVENT_TYPES[job_status]
    except KeyError:
        raise ValueError(f"a job in status {job_status!r} has not ended") from None


def _timestamp(moment: datetime | None) -> str:
    value = (moment or datetime.now(UTC)).astimezone(UTC)
    return value.isoformat(timespec="microseconds").replace("+00:00", "Z")


def serialise_event(event_type: str, data: dict[str, Any], occurred_at: datetime | None) -> str:
    """The event's JSON text: compact, UTF-8 characters kept, keys in a stable order."""
    event = {"type": event_type, "timestamp": _timestamp(occurred_at), "data": data}
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"), default=str)

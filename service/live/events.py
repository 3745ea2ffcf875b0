"""The events a job's live stream holds, as Redis entries and as Server-Sent Events.

Entry fields: ``t`` (the event type), ``a`` (the attempt, deltas and restarts only) and
``d`` (the event's JSON text). A final event's text is the webhook body
(``service.webhooks.events``), so a client parses one shape whether it got the job's end
by webhook or live.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from service.webhooks.events import event_type_for, serialise_event

DELTA = "delta"
ATTEMPT_RESTARTED = "attempt_restarted"
ENDED_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
# The SSE id of a final event built from Postgres (the stream had expired or never held it).
FINAL_ID = "final"
KEY_PREFIX = "ezq:live:"


def stream_key(job_id: uuid.UUID | str) -> str:
    """The Redis key of the job's stream."""
    return f"{KEY_PREFIX}{job_id}"


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """One event of a job's live stream.

    ``type`` is ``delta``, ``attempt_restarted``, ``job.succeeded``, ``job.failed`` or
    ``job.cancelled``; ``id`` resumes the stream after this event (``Last-Event-ID``);
    ``data`` is the event's JSON text (parsed by ``payload``).
    """

    id: str
    type: str
    data: str
    attempt: int | None = None

    @property
    def final(self) -> bool:
        return self.type.startswith("job.")

    @property
    def payload(self) -> dict[str, Any]:
        """The JSON object: ``{"attempt", "content"?, "reasoning"?, "tool_calls"?}`` for a
        delta, ``{"attempt"}`` for a restart, the webhook body for a final event."""
        value: dict[str, Any] = json.loads(self.data)
        return value

    @property
    def text(self) -> str:
        """A delta's reply text ("" for other events and for deltas without text)."""
        if self.type != DELTA:
            return ""
        return str(self.payload.get("content") or "")

    def sse(self) -> bytes:
        """The event in the ``text/event-stream`` format."""
        return f"id: {self.id}\nevent: {self.type}\ndata: {self.data}\n\n".encode()


def entry_fields(kind: str, data: dict[str, Any] | str, attempt: int | None) -> dict[str, str]:
    """The fields of a stream entry."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    fields = {"t": kind, "d": text}
    if attempt is not None:
        fields["a"] = str(attempt)
    return fields


def from_entry(entry_id: bytes | str, fields: dict[bytes, bytes]) -> LiveEvent:
    """An event from a stream entry as redis-py returns it."""
    attempt = fields.get(b"a")
    return LiveEvent(
        id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
        type=fields[b"t"].decode(),
        data=fields[b"d"].decode(),
        attempt=int(attempt) if attempt is not None else None,
    )


def final_text(view: dict[str, Any]) -> str:
    """The final event's JSON text for an ended job's view: the webhook body, byte for
    byte (same builder, stamped with the job's ``finished_at``)."""
    finished = view.get("finished_at")
    moment = datetime.fromisoformat(finished) if finished else None
    return serialise_event(event_type_for(view["status"]), view, moment)


def final_event(view: dict[str, Any], event_id: str = FINAL_ID) -> LiveEvent:
    """The final event of an ended job, from its view."""
    return LiveEvent(id=event_id, type=event_type_for(view["status"]), data=final_text(view))


class Follower:
    """Turns the entries read from a job's stream into the events a client gets.

    It remembers where to read next, drops deltas of an attempt older than the latest one
    seen (a dying worker's last batch can land after the next attempt started), and
    notices the final event.
    """

    def __init__(self, last_event_id: str | None = None) -> None:
        self.last_id: str = (
            last_event_id if last_event_id and _is_entry_id(last_event_id) else "0-0"
        )
        self.attempt = 0
        self.done = False

    def take(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[LiveEvent]:
        """The events to send for these entries, in order; stops at the final event."""
        events = []
        for entry_id, fields in entries:
            event = from_entry(entry_id, fields)
            self.last_id = event.id
            if event.attempt is not None:
                if event.attempt < self.attempt:
                    continue
                self.attempt = event.attempt
            events.append(event)
            if event.final:
                self.done = True
                break
        return events


_ENTRY_ID = re.compile(r"[0-9]{1,20}(-[0-9]{1,20})?")


def _is_entry_id(value: str) -> bool:
    # A Last-Event-ID that is not a stream id Redis accepts (FINAL_ID, garbage, numbers
    # past 64 bits) restarts from the top rather than failing the read.
    if not _ENTRY_ID.fullmatch(value):
        return False
    return all(int(part) < 2**64 for part in value.split("-"))

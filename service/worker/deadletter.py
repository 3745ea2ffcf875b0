"""Keeping aside broker messages that no worker can run, so that they never stop one.

A dead letter is stored in ``dead_letters`` with its raw bytes and the reason, and logged
once, by size and reason only: a message's content may hold prompts or secrets.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from service import metrics
from service.db import recovery
from service.db.session import transaction

log = logging.getLogger(__name__)

# The raw message kept per dead letter; a larger one is cut here (raw_bytes says how large).
MAX_DEAD_LETTER_BYTES = 1_000_000

# Set by the worker at start-up, so dead letters say which worker set them aside.
worker_name: str | None = None


def raw_bytes(value: Any) -> bytes:
    """The message as bytes, whatever shape the transport handed over."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    try:
        return json.dumps(value, default=repr).encode()
    except (TypeError, ValueError):
        return repr(value).encode()


def set_aside(
    raw: Any,
    reason: str,
    *,
    kind: str,
    queue: str | None = None,
    task_name: str | None = None,
    message_id: str | None = None,
) -> None:
    """Store a message no worker can run; never raises.

    ``kind`` is the metric label (``ezq_dead_letters_total``): a short fixed word, where
    ``reason`` is the sentence kept with the message.
    """
    data = raw_bytes(raw)
    metrics.dead_letter(kind)
    try:
        with transaction() as session:
            letter_id = recovery.add_dead_letter(
                session,
                raw=data,
                reason=reason,
                queue=queue,
                task_name=task_name,
                message_id=message_id,
                worker=worker_name,
                max_bytes=MAX_DEAD_LETTER_BYTES,
            )
    except SQLAlchemyError as exc:
        log.error(
            "message rejected (%s; %d bytes, task=%s) and dropped: the database is"
            " unavailable to keep it (%s)",
            reason,
            len(data),
            task_name,
            type(exc).__name__,
        )
        return
    except Exception:  # whatever happens here must not stop the consumer
        log.exception("message rejected (%s) and could not be kept", reason)
        return
    log.error(
        "message rejected and kept as dead letter %d: %s (%d bytes, queue=%s, task=%s)",
        letter_id,
        reason,
        len(data),
        queue,
        task_name,
    )

"""ezq: background LLM chat completions through ezrouter, with Celery and Postgres.

The public names are loaded on first use, so that ``import service.fake_gateway`` or
``ezq --help`` does not pull in the database layer.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "enqueue_completion": "service.producer",
    "get_job": "service.producer",
    "get_conversation": "service.producer",
    "cancel_job": "service.producer",
    "stream_job": "service.live.follow",
    "LiveEvent": "service.live.events",
    "JobAlreadyFinished": "service.errors",
    "EzqError": "service.errors",
    "InvalidRequest": "service.errors",
    "ConversationNotFound": "service.errors",
    "IdempotencyConflict": "service.errors",
    "JobNotFound": "service.errors",
}

__all__ = [
    "ConversationNotFound",
    "EzqError",
    "IdempotencyConflict",
    "InvalidRequest",
    "JobAlreadyFinished",
    "JobNotFound",
    "LiveEvent",
    "cancel_job",
    "enqueue_completion",
    "get_conversation",
    "get_job",
    "stream_job",
]

if TYPE_CHECKING:
    from service.errors import (
        ConversationNotFound,
        EzqError,
        IdempotencyConflict,
        InvalidRequest,
        JobAlreadyFinished,
        JobNotFound,
    )
    from service.live.events import LiveEvent
    from service.live.follow import stream_job
    from service.producer import cancel_job, enqueue_completion, get_conversation, get_job


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'service' has no attribute {name!r}")
    return getattr(import_module(module), name)

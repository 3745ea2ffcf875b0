"""ezq: background LLM chat completions through ezrouter, with Celery and Postgres."""

from service.errors import (
    ConversationNotFound,
    EzqError,
    IdempotencyConflict,
    InvalidRequest,
    JobNotFound,
)
from service.producer import enqueue_completion, get_conversation, get_job

__version__ = "0.1.0"

__all__ = [
    "ConversationNotFound",
    "EzqError",
    "IdempotencyConflict",
    "InvalidRequest",
    "JobNotFound",
    "enqueue_completion",
    "get_conversation",
    "get_job",
]

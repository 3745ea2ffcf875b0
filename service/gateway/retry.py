"""Which failures are retried, and how long to wait before the next attempt."""

from __future__ import annotations

import random

from service.errors import GatewayError
from service.gateway.translate import (
    SDK_CONNECTION_ERRORS,
    SDK_STATUS_ERRORS,
    SDK_STREAM_ERRORS,
)


def is_retryable(error: BaseException) -> bool:
    """True for connection errors (timeouts and broken streams included) and 5xx only.

    Every 4xx, 429 included, is final: ezrouter never sends 429 for load, so a 429 means a
    quota or policy decision that retrying will not change. The same rule holds for both
    surfaces' SDKs (openai and anthropic).
    """
    if isinstance(error, GatewayError):
        return error.retryable
    if isinstance(error, SDK_CONNECTION_ERRORS):
        return True
    if isinstance(error, SDK_STATUS_ERRORS):
        return error.status_code >= 500
    # A plain APIError is what the SDKs raise for an error frame inside a started stream.
    return type(error) in SDK_STREAM_ERRORS


def backoff_seconds(
    attempt: int, *, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """Exponential backoff with jitter: half fixed, half random, capped.

    ``attempt`` is the number of the attempt that just failed (1 for the first).
    """
    ceiling = min(cap, base * 2 ** (attempt - 1))
    return float(ceiling / 2 + (rng or random).uniform(0, ceiling / 2))

"""Which failures are retried, and how long to wait before the next attempt."""

from __future__ import annotations

import random

import openai

from service.errors import GatewayError


def is_retryable(error: BaseException) -> bool:
    """True for connection errors (timeouts and broken streams included) and 5xx only.

    Every 4xx, 429 included, is final: ezrouter never sends 429 for load, so a 429 means a
    quota or policy decision that retrying will not change.
    """
    if isinstance(error, GatewayError):
        return error.retryable
    if isinstance(error, openai.APIConnectionError):
        return True
    if isinstance(error, openai.APIStatusError):
        return error.status_code >= 500
    # A plain APIError is what the SDK raises for an error frame inside a started stream.
    return type(error) is openai.APIError


def backoff_seconds(
    attempt: int, *, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """Exponential backoff with jitter: half fixed, half random, capped.

    ``attempt`` is the number of the attempt that just failed (1 for the first).
    """
    ceiling = min(cap, base * 2 ** (attempt - 1))
    return float(ceiling / 2 + (rng or random).uniform(0, ceiling / 2))

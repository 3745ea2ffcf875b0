"""When to try a delivery again: one pure decision per attempt, tested with tables.

A 2xx ends the delivery. 410 Gone and a refused address end it as failed. Anything else
(timeouts, connection errors, other statuses, redirects, which are never followed) is
retried on the schedule with jitter, waiting longer when the receiver asks with
``Retry-After``, until the attempts run out.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from service import constants as c


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one attempt got: an HTTP status, or an error with no status."""

    status_code: int | None
    error: str | None
    duration_ms: int
    retry_after: float | None = None
    # Refused by the address policy, or a URL that can never work: not worth retrying.
    refused: bool = False

    def loggable(self) -> str:
        """What a log line may say of it: the status alone when the receiver answered.
        Its answer (kept in ``webhook_attempts.error``) may quote the event it got, reply
        text included, and a redirect's location may hold a token."""
        if self.status_code is not None:
            return f"HTTP {self.status_code}"
        return self.error or "no answer"


@dataclass(frozen=True, slots=True)
class Delivered:
    """The receiver accepted the event."""


@dataclass(frozen=True, slots=True)
class GiveUp:
    """No more attempts; the delivery is failed (and can be redelivered by hand)."""

    reason: str


@dataclass(frozen=True, slots=True)
class RetryIn:
    """Try again after ``seconds``."""

    seconds: float


Decision = Delivered | GiveUp | RetryIn


def scheduled_delay(
    round_attempt: int,
    schedule: Sequence[float],
    *,
    jitter: float = c.WEBHOOK_RETRY_JITTER,
    rng: random.Random | None = None,
) -> float:
    """The wait after failed attempt ``round_attempt`` (1-based); the last step repeats."""
    base = schedule[min(max(round_attempt, 1), len(schedule)) - 1]
    factor = (rng or random).uniform(1 - jitter, 1 + jitter)
    return max(0.0, base * factor)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (delay or HTTP date); None if unusable."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def decide(
    result: AttemptResult,
    *,
    round_attempt: int,
    max_attempts: int,
    schedule: Sequence[float],
    rng: random.Random | None = None,
) -> Decision:
    """What follows attempt ``round_attempt`` of this round, given its result."""
    if result.refused:
        return GiveUp(result.error or "refused by the address policy")
    status = result.status_code
    if status is not None and 200 <= status < 300:
        return Delivered()
    if status == 410:
        return GiveUp("the receiver answered 410 Gone")
    if round_attempt >= max_attempts:
        return GiveUp(f"no success after {round_attempt} attempts")
    delay = scheduled_delay(round_attempt, schedule, rng=rng)
    if result.retry_after is not None:
        delay = max(delay, min(result.retry_after, c.WEBHOOK_RETRY_AFTER_MAX_S))
    return RetryIn(delay)

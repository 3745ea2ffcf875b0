"""The retry decision for webhook attempts, as tables."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from service import constants as c
from service.webhooks.retry import (
    AttemptResult,
    Delivered,
    GiveUp,
    RetryIn,
    decide,
    parse_retry_after,
    scheduled_delay,
)

SCHEDULE = (5.0, 300.0, 1800.0)


def result(
    status: int | None, *, retry_after: float | None = None, refused: bool = False
) -> AttemptResult:
    error = None if status is not None and 200 <= status < 300 else "boom"
    return AttemptResult(status, error, 10, retry_after=retry_after, refused=refused)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, Delivered),
        (201, Delivered),
        (204, Delivered),
        (299, Delivered),
        (301, RetryIn),
        (302, RetryIn),
        (400, RetryIn),
        (401, RetryIn),
        (404, RetryIn),
        (410, GiveUp),
        (429, RetryIn),
        (500, RetryIn),
        (502, RetryIn),
        (503, RetryIn),
        (None, RetryIn),  # timeout or connection error
    ],
)
def test_status_decides_delivered_retry_or_stop(status: int | None, expected: type) -> None:
    """2xx delivers, 410 stops at once, everything else is retried while attempts remain."""
    decision = decide(result(status), round_attempt=1, max_attempts=8, schedule=SCHEDULE)
    assert isinstance(decision, expected)


def test_refused_target_is_never_retried() -> None:
    """A target refused by the address policy fails at once, whatever the attempt."""
    decision = decide(
        result(None, refused=True), round_attempt=1, max_attempts=8, schedule=SCHEDULE
    )
    assert decision == GiveUp("boom")


@pytest.mark.parametrize(
    ("attempt", "max_attempts", "gives_up"),
    [(7, 8, False), (8, 8, True), (9, 8, True), (1, 1, True)],
)
def test_the_last_attempt_gives_up(attempt: int, max_attempts: int, gives_up: bool) -> None:
    """Attempt number max_attempts is the last one."""
    decision = decide(
        result(500), round_attempt=attempt, max_attempts=max_attempts, schedule=SCHEDULE
    )
    assert isinstance(decision, GiveUp) is gives_up


@pytest.mark.parametrize(
    ("attempt", "base"), [(1, 5.0), (2, 300.0), (3, 1800.0), (4, 1800.0), (20, 1800.0), (0, 5.0)]
)
def test_schedule_steps_with_jitter_and_repeats_its_last_step(attempt: int, base: float) -> None:
    """The wait after attempt n is step n of the schedule, the last step repeating, ±20 %."""
    rng = random.Random(attempt)
    delays = [scheduled_delay(attempt, SCHEDULE, rng=rng) for _ in range(200)]
    jitter = c.WEBHOOK_RETRY_JITTER
    assert all(base * (1 - jitter) <= d <= base * (1 + jitter) for d in delays)
    assert len(set(delays)) > 1, "the delays are jittered"


def test_default_schedule_is_standard_webhooks_like() -> None:
    """Seconds, then minutes, then hours: eight attempts over about a day and a half."""
    assert c.WEBHOOK_RETRY_SCHEDULE_S == (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
    assert len(c.WEBHOOK_RETRY_SCHEDULE_S) + 1 == c.WEBHOOK_MAX_ATTEMPTS


NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        ("Wed, 25 Nov 2026 12:01:30 GMT", 90.0),
        ("Wed, 25 Nov 2026 11:00:00 GMT", 0.0),  # a date in the past means now
    ],
)
def test_retry_after_parses_seconds_and_http_dates(
    header: str | None, seconds: float | None
) -> None:
    """Retry-After is a delay in whole seconds or an HTTP date; anything else is ignored."""
    assert parse_retry_after(header, now=NOW) == seconds


@pytest.mark.parametrize(
    ("retry_after", "low", "high"),
    [
        (None, 4.0, 6.0),  # the schedule's 5 s, jittered
        (1.0, 4.0, 6.0),  # asking for less than the schedule changes nothing
        (60.0, 60.0, 60.0),
        (10**9, c.WEBHOOK_RETRY_AFTER_MAX_S, c.WEBHOOK_RETRY_AFTER_MAX_S),  # capped
    ],
)
def test_retry_after_lengthens_the_wait_up_to_a_cap(
    retry_after: float | None, low: float, high: float
) -> None:
    """The wait is the longer of the schedule and Retry-After, which is capped."""
    decision = decide(
        result(503, retry_after=retry_after), round_attempt=1, max_attempts=8, schedule=SCHEDULE
    )
    assert isinstance(decision, RetryIn)
    assert low <= decision.seconds <= high

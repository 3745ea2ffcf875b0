"""Reading dates and instants from the command line and price files. Days are UTC days."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta

from service.errors import InvalidRequest

_DAYS_AGO = re.compile(r"(\d+)d")
MAX_DAYS_BACK = 36_600  # a century: more is a typo, and would overflow the date type
SINCE_FORMS = "Nd (days ago, e.g. 7d) or a date YYYY-MM-DD"


def today_utc() -> date:
    return datetime.now(UTC).date()


def parse_day(value: str, field: str) -> date:
    """A calendar day written YYYY-MM-DD."""
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise InvalidRequest(field, f"must be a date YYYY-MM-DD, got {value!r}") from None


def parse_since(value: str, field: str, *, today: date | None = None) -> date:
    """``Nd`` (the last N UTC days, today included, so ``1d`` is today) or YYYY-MM-DD."""
    match = _DAYS_AGO.fullmatch(value.strip())
    if match is None:
        try:
            return parse_day(value, field)
        except InvalidRequest:
            # Not a date either: say both forms, or `7d` looks unsupported.
            raise InvalidRequest(field, f"must be {SINCE_FORMS}, got {value!r}") from None
    days = int(match.group(1))
    if not 1 <= days <= MAX_DAYS_BACK:
        raise InvalidRequest(field, f"must be 1d to {MAX_DAYS_BACK}d, got {value!r}")
    return (today or today_utc()) - timedelta(days=days - 1)


def parse_instant(value: str, field: str) -> datetime:
    """YYYY-MM-DD (midnight UTC) or an ISO 8601 date and time (UTC unless it has an offset)."""
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(
            field, f"must be YYYY-MM-DD or an ISO 8601 date and time, got {value!r}"
        ) from None
    if len(text) == 10:  # a bare date
        parsed = datetime.combine(parsed.date(), time(), UTC)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def start_of(day: date) -> datetime:
    """Midnight UTC at the start of ``day``."""
    return datetime.combine(day, time(), UTC)

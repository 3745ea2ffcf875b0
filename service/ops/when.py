"""``--since``, ``--until`` and ``--before`` for every listing and maintenance command.

One grammar everywhere: ``Nd`` / ``Nh`` / ``Nm`` (that long before now), ``now``, a day
``YYYY-MM-DD`` (midnight UTC) or an ISO 8601 time (UTC unless it has an offset).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from service.errors import InvalidRequest
from service.usage.periods import MAX_DAYS_BACK, parse_instant

_AGO = re.compile(r"(\d+)([dhm])")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}
HELP = "Nd, Nh or Nm ago, a day YYYY-MM-DD (UTC) or an ISO 8601 time."


def parse_moment(value: str, field: str, *, now: datetime | None = None) -> datetime:
    """The instant ``value`` names (see the module docstring)."""
    text = value.strip().lower()
    now = now or datetime.now(UTC)
    if text == "now":
        return now
    match = _AGO.fullmatch(text)
    if match is None:
        try:
            return parse_instant(value, field)
        except InvalidRequest:
            raise InvalidRequest(field, f"must be {HELP[:-1]}; got {value!r}") from None
    amount, unit = int(match.group(1)), match.group(2)
    delta = timedelta(**{_UNITS[unit]: amount})
    if delta > timedelta(days=MAX_DAYS_BACK):
        raise InvalidRequest(field, f"must be at most {MAX_DAYS_BACK}d back, got {value!r}")
    return now - delta


def parse_until(value: str, field: str) -> datetime:
    """An exclusive end: a bare day includes that whole UTC day, anything else is as given."""
    moment = parse_moment(value, field)
    if len(value.strip()) == 10 and value.strip()[4] == "-":
        return moment + timedelta(days=1)
    return moment

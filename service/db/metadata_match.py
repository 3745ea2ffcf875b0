"""What metadata filters ``KEY=VALUE`` match, for every job listing and selection.

People tag both ways (``{"n": 1}`` and ``{"n": "1"}``), so a value typed as text matches
the string itself and the JSON number, boolean or null it spells. Filters on one key are
alternatives (``--meta conv=c1 --meta conv=c2``: either), on different keys all must hold,
as every other repeated filter.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def spelled_values(raw: str) -> list[Any]:
    """``raw`` as a string, then the JSON scalar it spells if any. Not NaN or Infinity
    (nor a number too large for a float): Postgres's JSON holds neither, and a job's
    metadata never does, so such a value matches as text only."""
    try:
        parsed = json.loads(raw, parse_constant=_no_constant)
    except ValueError:
        return [raw]
    if isinstance(parsed, dict | list | str) or (
        isinstance(parsed, float) and not math.isfinite(parsed)
    ):
        return [raw]
    return [raw, parsed]


def by_key(pairs: Iterable[tuple[str, str]]) -> dict[str, list[Any]]:
    """The values each key may have, from ``(key, value as typed)`` pairs, in order."""
    wanted: dict[str, list[Any]] = {}
    seen: set[tuple[str, str]] = set()
    for key, raw in pairs:
        values = wanted.setdefault(key, [])
        for value in spelled_values(raw):
            # Compared as JSON: in Python 1 == True, and either may be tagged.
            if (key, json.dumps(value)) not in seen:
                seen.add((key, json.dumps(value)))
                values.append(value)
    return wanted

"""What a metadata filter ``KEY=VALUE`` matches, for every job listing and selection.

People tag both ways (``{"n": 1}`` and ``{"n": "1"}``), so a value typed as text matches
the string itself and the JSON number, boolean or null it spells.
"""

from __future__ import annotations

import json
import math
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

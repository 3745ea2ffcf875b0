"""OpenAI's timestamps: whole seconds since the epoch."""

from __future__ import annotations

from datetime import datetime


def epoch(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None

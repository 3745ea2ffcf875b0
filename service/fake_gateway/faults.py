"""Scripted failures that the fake gateway applies to incoming chat requests."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Kinds that cut a 200 stream short after `after_chunks` content chunks.
MID_STREAM_KINDS: frozenset[str] = frozenset(
    {"drop_mid_stream", "truncate", "error_frame", "malformed"}
)

FAULT_KINDS: frozenset[str] = frozenset(
    {
        "normal",
        "status",
        "drop",
        "non_sse",
        "empty",
        "no_finish",
        "tool_calls",
        "tool_calls_broken",
        "empty_content",
        "usage_on_finish",
        *MID_STREAM_KINDS,
    }
)


def _is_int(value: object) -> bool:
    # bool is an int subclass, but `times=True` is always a mistake.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class Fault:
    """One scripted behaviour; see the package docstring for the meaning of each kind."""

    kind: str = ""
    status: int | None = None
    times: int = 1
    match: str | None = None
    after_chunks: int = 0
    latency: float = 0.0
    chunk_delay: float = 0.0
    reply: str | None = None
    # Fields laid over the usage object the reply would carry (OpenAI surface): a gateway
    # reporting what it should not, e.g. a count no token_usage column can hold.
    usage: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.kind:
            self.kind = "status" if self.status is not None else "normal"
        if self.kind not in FAULT_KINDS:
            raise ValueError(
                f"unknown fault kind {self.kind!r}; expected one of {sorted(FAULT_KINDS)}"
            )
        if self.kind == "status":
            if not _is_int(self.status) or not 400 <= int(self.status or 0) <= 599:
                raise ValueError("kind='status' needs an integer status between 400 and 599")
        elif self.status is not None:
            raise ValueError(f"status only applies to kind='status', not {self.kind!r}")
        if not _is_int(self.times) or self.times < 1:
            raise ValueError("times must be an integer >= 1")
        if not _is_int(self.after_chunks) or self.after_chunks < 0:
            raise ValueError("after_chunks must be an integer >= 0")
        for name in ("latency", "chunk_delay"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise ValueError(f"{name} must be a number >= 0")
        for name in ("match", "reply"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string or null")
        if self.usage is not None and not isinstance(self.usage, dict):
            raise ValueError("usage must be an object or null")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fault:
        """Build a fault from its JSON form (the admin endpoint), rejecting unknown fields."""
        if not isinstance(data, Mapping):
            raise ValueError("a fault must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form accepted by `from_dict`."""
        return dataclasses.asdict(self)


class FaultQueue:
    """Thread-safe FIFO of faults; each chat request consumes at most one matching entry."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, *faults: Fault) -> None:
        """Append faults; copies are stored so callers' objects are never mutated."""
        with self._lock:
            self._faults.extend(dataclasses.replace(f) for f in faults)

    def clear(self) -> None:
        """Drop every pending fault."""
        with self._lock:
            self._faults.clear()

    def pending(self) -> list[Fault]:
        """Return copies of the pending faults, in queue order."""
        with self._lock:
            return [dataclasses.replace(f) for f in self._faults]

    def take(self, raw_body: str) -> Fault | None:
        """Consume one use of the first fault whose `match` occurs in `raw_body`."""
        with self._lock:
            for index, fault in enumerate(self._faults):
                if fault.match is not None and fault.match not in raw_body:
                    continue
                fault.times -= 1
                if fault.times <= 0:
                    del self._faults[index]
                return dataclasses.replace(fault, times=1)
        return None

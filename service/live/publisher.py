"""The worker's side of live tokens: deltas from the stream-reading loop to Redis.

Cheap on purpose: per chunk an assembler appends the fragment to its attempt's deque
(``LiveAttempt``), nothing more, and a job's thread never waits on Redis. One flusher
thread per process writes, each ``EZQ_LIVE_FLUSH_INTERVAL`` (50 ms), everything new in one
pipelined round trip (one ``XADD`` per entry, plus an ``EXPIRE`` on a stream's first
write and on its final event), however many jobs run: first the entries queued in order
by the jobs' threads (an attempt's ``attempt_restarted`` when it starts, its last
fragments when its call ends, a job's final event after its end is committed), then the
new fragments of every running attempt. One queue and one writer keep each job's entries
in the order they happened.
Redis being slow or down never fails or slows a call for long: a failed write drops that
batch and skips Redis for ``LIVE_BACKOFF_S``; the reply is in Postgres whatever happens
here.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import redis

from service import constants as c
from service.config import get_settings
from service.live.events import (
    ATTEMPT_RESTARTED,
    DELTA,
    ENDED_STATUSES,
    entry_fields,
    final_text,
    stream_key,
)
from service.webhooks.events import event_type_for

log = logging.getLogger(__name__)

_CONTENT, _REASONING, _TOOL = 0, 1, 2

# A stream entry to add: the key, its fields, and the TTL to set on the key (seconds;
# None: leave it).
Entry = tuple[str, dict[str, str], int | None]

_current: ContextVar[LiveAttempt | None] = ContextVar("ezq_live_attempt", default=None)


class LiveAttempt:
    """Where an assembler puts the fragments of one attempt as it reads them."""

    __slots__ = ("attempt", "expiring", "key", "pending")

    def __init__(self, job_id: uuid.UUID, attempt: int) -> None:
        self.key = stream_key(job_id)
        self.attempt = attempt
        # deque.append / popleft are atomic: the reading thread and the flusher need no lock.
        self.pending: deque[tuple[int, Any]] = deque()
        # The stream's TTL is set by the attempt's first write (and again by the final
        # event); the TTL outlasts any attempt, so later batches skip the EXPIRE.
        self.expiring = False

    def content(self, text: str) -> None:
        self.pending.append((_CONTENT, text))

    def reasoning(self, text: str) -> None:
        self.pending.append((_REASONING, text))

    def tool_call(self, fragment: dict[str, Any]) -> None:
        """An OpenAI ``delta.tool_calls`` fragment (``index``, ``id``?, ``function``)."""
        self.pending.append((_TOOL, fragment))

    def drain(self) -> dict[str, Any] | None:
        """What arrived since the last drain, as one delta's data; None if nothing did."""
        content: list[str] = []
        reasoning: list[str] = []
        tools: list[dict[str, Any]] = []
        pending = self.pending
        while pending:
            kind, value = pending.popleft()
            if kind == _CONTENT:
                content.append(value)
            elif kind == _REASONING:
                reasoning.append(value)
            else:
                _merge_fragment(tools, value)
        if not (content or reasoning or tools):
            return None
        data: dict[str, Any] = {"attempt": self.attempt}
        if content:
            data["content"] = "".join(content)
        if reasoning:
            data["reasoning"] = "".join(reasoning)
        if tools:
            data["tool_calls"] = tools
        return data

    def delta_entry(self, ttl: int) -> Entry | None:
        """What arrived since the last drain, as the stream entry to add (with ``ttl`` set
        on the stream's first write); None if nothing did."""
        if not self.pending:  # in most flushes: most attempts still wait for a first token
            return None
        data = self.drain()
        if data is None:
            return None
        return (self.key, entry_fields(DELTA, data, self.attempt), None if self.expiring else ttl)


def _merge_fragment(tools: list[dict[str, Any]], fragment: dict[str, Any]) -> None:
    # Consecutive argument pieces of one call become one fragment.
    last = tools[-1] if tools else None
    if last is not None and last.get("index") == fragment.get("index") and "id" not in fragment:
        piece = (fragment.get("function") or {}).get("arguments") or ""
        function = last.setdefault("function", {})
        function["arguments"] = function.get("arguments", "") + piece
        return
    tools.append({**fragment, "function": dict(fragment.get("function") or {})})


def current() -> LiveAttempt | None:
    """The attempt this thread is running, when live tokens are on."""
    return _current.get()


class Publisher:
    """One per process: the Redis client, the running attempts and the flusher thread."""

    def __init__(
        self,
        url: str,
        *,
        interval: float,
        maxlen: int,
        ttl: float,
        ended_ttl: float = c.LIVE_ENDED_TTL_S,
    ) -> None:
        self._redis = redis.Redis.from_url(
            url,
            socket_timeout=c.LIVE_REDIS_TIMEOUT_S,
            socket_connect_timeout=c.LIVE_REDIS_TIMEOUT_S,
        )
        self._interval = interval
        self._maxlen = maxlen
        self._ttl = int(ttl)
        # A job's stream once its final event is written: what it holds is then also in
        # Postgres, which answers for an ended job; only a reader already following it
        # still reads it, to its final event.
        self._ended_ttl = max(1, int(ended_ttl))
        self._attempts: set[LiveAttempt] = set()
        # Entries the jobs' threads queued, in the order they happened.
        self._queued: deque[Entry] = deque()
        # Held for the queue and the running attempts, never across I/O.
        self._state_lock = threading.Lock()
        # Held while a batch is taken and written, so batches never overtake each other.
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._skip_until = 0.0
        self._thread: threading.Thread | None = None

    # --- the hooks: called on the jobs' threads, they only queue --------------------

    def start(self, job_id: uuid.UUID, attempt: int) -> LiveAttempt:
        live = LiveAttempt(job_id, attempt)
        with self._state_lock:
            if attempt > 1:
                # Whatever an earlier attempt streamed is void: readers drop it.
                restarted = entry_fields(ATTEMPT_RESTARTED, {"attempt": attempt}, attempt)
                self._queued.append((live.key, restarted, self._ttl))
            self._attempts.add(live)
        self._ensure_thread()
        self._wake.set()
        return live

    def finish(self, live: LiveAttempt) -> None:
        """The attempt's call returned or raised: queue what it left, ahead of the final
        event."""
        with self._state_lock:
            self._attempts.discard(live)
            entry = live.delta_entry(self._ttl)
            if entry is not None:
                self._queued.append(entry)
        self._wake.set()

    def ended(self, view: dict[str, Any], *, now: bool = False) -> None:
        """The job ended (``view`` is its JSON view): its final event, queued for the next
        flush, or written before returning with ``now`` (a short-lived caller, such as
        ``ezq cancel``, may exit before a flush)."""
        if view.get("status") not in ENDED_STATUSES:
            return
        key = stream_key(view["job_id"])
        fields = entry_fields(event_type_for(view["status"]), final_text(view), None)
        entry = (key, fields, self._ended_ttl)
        with self._state_lock:
            self._queued.append(entry)
        if now:
            self.flush()
        else:
            self._ensure_thread()
            self._wake.set()

    # --- writing --------------------------------------------------------------------

    def flush(self) -> None:
        """Write the queued entries, then every running attempt's new fragments, in one
        round trip."""
        with self._write_lock:
            with self._state_lock:
                batch = list(self._queued)
                self._queued.clear()
                written = []
                for live in self._attempts:
                    entry = live.delta_entry(self._ttl)
                    if entry is not None:
                        batch.append(entry)
                        written.append(live)
            if self._send(batch):
                # Only once a write with its EXPIRE went through: no stream is left without
                # a TTL by a failed first write.
                for live in written:
                    live.expiring = True

    def _send(self, batch: list[Entry]) -> bool:
        """Write the batch in one round trip; False if it was dropped."""
        if not batch or time.monotonic() < self._skip_until:
            return False
        pipe = self._redis.pipeline(transaction=False)
        for key, fields, ttl in batch:
            # An entry that sets no TTL follows its stream's first write, which did: should
            # the stream be gone by now (it expired, say a minute after a final event that
            # ``ezq cancel`` or the sweep wrote while this attempt still streams), it is
            # not made again, without a TTL, for ever (``NOMKSTREAM``, Redis 6.2).
            pipe.xadd(
                key,
                fields,  # type: ignore[arg-type]
                maxlen=self._maxlen,
                approximate=True,
                nomkstream=ttl is None,
            )
            if ttl is not None:
                pipe.expire(key, ttl)
        try:
            pipe.execute()
        except Exception as exc:  # Redis down or slow: never the call's problem
            self._skip_until = time.monotonic() + c.LIVE_BACKOFF_S
            log.warning(
                "live tokens: could not write to Redis (%s); skipping it for %.0fs",
                type(exc).__name__,
                c.LIVE_BACKOFF_S,
            )
            return False
        return True

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._write_lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(
                        target=self._run, name="ezq-live-flusher", daemon=True
                    )
                    self._thread.start()

    def _idle(self) -> bool:
        return not self._attempts and not self._queued

    def _run(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(self._interval)
            try:
                self.flush()
            except Exception as exc:  # never let the flusher die; the next interval retries
                log.warning("live tokens: flush failed (%s)", type(exc).__name__)
            if self._idle():
                self._wake.clear()
                if not self._idle():  # something came between the check and the clear
                    self._wake.set()


_publisher: Publisher | None = None
_publisher_lock = threading.Lock()
_disabled = False


def publisher() -> Publisher | None:
    """The process's publisher, or None when live tokens are off (``EZQ_LIVE_REDIS_URL``)."""
    global _publisher, _disabled
    if _publisher is None and not _disabled:
        with _publisher_lock:
            if _publisher is None and not _disabled:
                settings = get_settings()
                url = settings.live_redis_url
                if url is None:
                    _disabled = True
                    return None
                _publisher = Publisher(
                    url,
                    interval=settings.ezq_live_flush_interval,
                    maxlen=settings.ezq_live_maxlen,
                    ttl=settings.ezq_live_ttl,
                    ended_ttl=settings.ezq_live_ended_ttl,
                )
                # What is queued when the process exits still goes out.
                atexit.register(_publisher.flush)
    return _publisher


@contextmanager
def attempt(job_id: uuid.UUID, attempt_number: int) -> Iterator[LiveAttempt | None]:
    """Around one gateway call: the reading loop finds the attempt with ``current()``."""
    pub = publisher()
    if pub is None:
        yield None
        return
    live = pub.start(job_id, attempt_number)
    token = _current.set(live)
    try:
        yield live
    finally:
        _current.reset(token)
        pub.finish(live)


def job_ended(view: dict[str, Any], *, now: bool = False) -> None:
    """After the commit that ended the job: its final event, for live readers (queued for
    the flusher, or written at once with ``now``)."""
    pub = publisher()
    if pub is not None:
        try:
            pub.ended(view, now=now)
        except Exception as exc:  # after the commit: the job's end stands whatever happens
            # The type only: an exception's text could quote the reply.
            log.warning("live tokens: could not write the final event (%s)", type(exc).__name__)

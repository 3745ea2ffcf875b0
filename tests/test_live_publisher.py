"""The worker's live-token publisher: jobs' threads queue, one flusher writes, in order."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator

import pytest
import redis

from service import constants as c
from service.live.events import stream_key
from service.live.publisher import Publisher
from tests.conftest import REDIS_URL


def entry_types(job_id: uuid.UUID) -> list[tuple[str, str]]:
    """(type, attempt) of each entry of the job's stream, oldest first."""
    entries: list[tuple[bytes, dict[bytes, bytes]]] = redis.Redis.from_url(REDIS_URL).xrange(
        stream_key(job_id)
    )  # type: ignore[assignment]
    return [(f[b"t"].decode(), f.get(b"a", b"").decode()) for _, f in entries]


@pytest.fixture
def job_id() -> Iterator[uuid.UUID]:
    the_id = uuid.uuid4()
    yield the_id
    redis.Redis.from_url(REDIS_URL).delete(stream_key(the_id))


def test_the_hooks_only_queue_and_one_flush_writes_in_order(job_id: uuid.UUID) -> None:
    """An attempt's last fragments, a retry's restart, its fragments and the final event
    reach Redis in the order they happened, and only when the flusher writes."""
    # An interval the test never reaches: only the explicit flushes write.
    pub = Publisher(REDIS_URL, interval=3600, maxlen=100, ttl=600, ended_ttl=30)
    first = pub.start(job_id, 1)
    first.content("Once upon ")
    pub.finish(first)
    second = pub.start(job_id, 2)
    second.content("Once ")
    assert entry_types(job_id) == []
    pub.flush()
    assert 30 < redis.Redis.from_url(REDIS_URL).ttl(stream_key(job_id)) <= 600
    second.content("upon a time")
    pub.finish(second)
    pub.ended({"job_id": str(job_id), "status": "succeeded", "content": "Once upon a time"})
    assert [t for t, _ in entry_types(job_id)] == ["delta", "attempt_restarted", "delta"]
    pub.flush()
    assert [t for t, _ in entry_types(job_id)] == [
        "delta",
        "attempt_restarted",
        "delta",
        "delta",
        "job.succeeded",
    ]
    # Once the final event is written, the stream expires sooner.
    assert 0 < redis.Redis.from_url(REDIS_URL).ttl(stream_key(job_id)) <= 30


def test_a_stream_gone_after_its_final_event_is_not_made_again(job_id: uuid.UUID) -> None:
    """An attempt still streaming after its job's final event (written by ``ezq cancel``
    or the sweep, in another process) writes nothing once that stream has expired: a
    stream made again by its later fragments would have no TTL and stay for ever."""
    pub = Publisher(REDIS_URL, interval=3600, maxlen=100, ttl=600, ended_ttl=30)
    live = pub.start(job_id, 1)
    live.content("Once ")
    pub.flush()  # the attempt's first write, with its TTL
    canceller = Publisher(REDIS_URL, interval=3600, maxlen=100, ttl=600, ended_ttl=30)
    canceller.ended({"job_id": str(job_id), "status": "cancelled"}, now=True)
    r = redis.Redis.from_url(REDIS_URL)
    r.delete(stream_key(job_id))  # as it expires, 30 s on
    live.content("upon a time")
    pub.finish(live)
    pub.flush()
    assert not r.exists(stream_key(job_id))


def test_a_stalled_redis_never_holds_up_a_jobs_thread(
    job_id: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the flusher is stuck in a write to a Redis that does not answer, a job's
    attempt still starts, ends and ends its job: its thread only queues."""
    monkeypatch.setattr(c, "LIVE_REDIS_TIMEOUT_S", 30.0)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    request_seen = threading.Event()
    accepted: list[socket.socket] = []

    def stall() -> None:  # reads the command, never answers
        conn, _ = listener.accept()
        accepted.append(conn)
        if conn.recv(65536):
            request_seen.set()

    threading.Thread(target=stall, daemon=True).start()
    pub = Publisher(f"redis://127.0.0.1:{port}/0", interval=3600, maxlen=100, ttl=60)
    stuck = pub.start(job_id, 1)
    stuck.content("text")
    flusher = threading.Thread(target=pub.flush, daemon=True)
    flusher.start()
    assert request_seen.wait(10), "the flush never reached the stalled Redis"
    try:
        other = uuid.uuid4()
        live = pub.start(other, 2)
        live.content("more")
        pub.finish(live)
        pub.ended({"job_id": str(other), "status": "failed", "error": {"type": "x"}})
        pub.finish(stuck)
        # Had any hook waited for the write, it would have returned only after it ended.
        assert flusher.is_alive()
    finally:
        for conn in accepted:
            conn.close()
        listener.close()
        flusher.join(10)
    assert not flusher.is_alive()


def test_what_is_queued_when_the_process_exits_still_goes_out(job_id: uuid.UUID) -> None:
    """A process that queues a final event and exits at once (no flush interval passed)
    leaves the event in the stream."""
    code = (
        "import sys\n"
        "from service.live.publisher import job_ended\n"
        "job_ended({'job_id': sys.argv[1], 'status': 'succeeded', 'content': 'bye'})\n"
    )
    env = {**os.environ, "EZQ_LIVE_REDIS_URL": REDIS_URL, "EZQ_LIVE_FLUSH_INTERVAL": "5"}
    done = subprocess.run(
        [sys.executable, "-c", code, str(job_id)], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert entry_types(job_id) == [("job.succeeded", "")]

"""Log lines written by a thread of their own: a thread that logs never waits on the log's
destination, and every line still comes out, in order, redacted, formatted as before."""

from __future__ import annotations

import fcntl
import io
import json
import logging
import logging.handlers
import os
import re
import select
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from service import enqueue_completion
from service.logsetup import JsonFormatter, RedactSecrets
from service.logwriter import LogWriter, write_in_background
from tests.conftest import drop_queue, wait_for_job

F_SETPIPE_SZ = 1031  # Linux: a pipe's capacity


class StalledStream(io.StringIO):
    """A log destination that stops reading until ``resume`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.resume = threading.Event()
        self.write_started = threading.Event()

    def write(self, text: str) -> int:
        self.write_started.set()
        self.resume.wait()
        return super().write(text)


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    named = logging.getLogger(f"test.logwriter.{uuid.uuid4().hex}")
    named.setLevel(logging.DEBUG)
    named.propagate = False
    yield named
    named.handlers = []


def _log_on_a_thread(logger: logging.Logger, *lines: str) -> threading.Thread:
    thread = threading.Thread(target=lambda: [logger.info("%s", line) for line in lines])
    thread.start()
    return thread


def test_a_thread_that_logs_does_not_wait_for_a_destination_that_stopped_reading(
    logger: logging.Logger,
) -> None:
    stream = StalledStream()
    logger.addHandler(logging.StreamHandler(stream))
    writer = LogWriter(logger)
    writer.start()

    first = _log_on_a_thread(logger, "one")
    assert stream.write_started.wait(10), "the writer never wrote"
    # The writer is stuck in the destination's write; the jobs' threads go on logging.
    more = _log_on_a_thread(logger, "two", "three")
    more.join(10)
    first.join(10)
    assert not more.is_alive() and not first.is_alive(), "a thread that logs waited"
    assert stream.getvalue() == ""

    stream.resume.set()
    writer.stop()
    assert stream.getvalue().splitlines() == ["one", "two", "three"]


def test_every_line_comes_out_in_each_threads_order_and_stop_writes_what_is_queued(
    logger: logging.Logger,
) -> None:
    stream = io.StringIO()
    logger.addHandler(logging.StreamHandler(stream))
    # A queue much smaller than the lines: when it is full, a thread that logs waits for
    # room (nothing is dropped).
    writer = LogWriter(logger, capacity=4)
    writer.start()
    threads = [
        threading.Thread(target=lambda t=t: [logger.info("%d %d", t, i) for i in range(500)])
        for t in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.stop()

    seen: dict[int, list[int]] = {}
    for line in stream.getvalue().splitlines():
        t, i = map(int, line.split())
        seen.setdefault(t, []).append(i)
    assert seen == {t: list(range(500)) for t in range(8)}
    # Stopped: the logger writes through its own handlers again.
    logger.info("after")
    assert stream.getvalue().endswith("after\n")


class Watched:
    """A stream wrapped so that a test can wait until some text has been written to it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.text = ""
        self.written = threading.Condition()

    def write(self, text: str) -> int:
        count = int(self.inner.write(text))
        with self.written:
            self.text += text
            self.written.notify_all()
        return count

    def flush(self) -> None:
        self.inner.flush()

    def close(self) -> None:
        self.inner.close()

    def fileno(self) -> int:
        return int(self.inner.fileno())

    def wait_for(self, text: str, timeout: float = 10.0) -> None:
        with self.written:
            assert self.written.wait_for(lambda: self.text == text, timeout), self.text


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_lines_logged_together_are_written_together(logger: logging.Logger) -> None:
    """A moment's lines reach the destination in a write or two, not one write each."""
    stream = CountingStream()
    logger.addHandler(logging.StreamHandler(stream))
    writer = LogWriter(logger)
    writer.start()
    _log_on_a_thread(logger, *(f"line {i}" for i in range(200))).join(10)
    writer.stop()
    assert stream.getvalue().splitlines() == [f"line {i}" for i in range(200)]
    assert stream.writes < 20, stream.writes


def test_a_warning_is_written_at_once_with_the_lines_before_it(logger: logging.Logger) -> None:
    """Lines below WARNING may wait for the writer's linger (here a minute); a WARNING
    does not, nor do the lines queued before it."""
    stream = Watched(io.StringIO())
    logger.addHandler(logging.StreamHandler(stream))
    writer = LogWriter(logger, linger=60.0)
    writer.start()
    logger.info("routine")
    logger.warning("a problem")
    stream.wait_for("routine\na problem\n")
    writer.stop()


def test_a_rotated_log_file_is_reopened_and_lines_written_together_go_to_the_new_one(
    logger: logging.Logger, tmp_path: Any
) -> None:
    """Celery's ``--logfile`` handler (``WatchedFileHandler``): once the file is moved
    away, as logrotate does, the next lines go to a new file of that name."""
    path = tmp_path / "worker.log"
    handler = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
    file = Watched(handler.stream)  # until the rotation, which opens a new file
    handler.stream = file
    logger.addHandler(handler)
    writer = LogWriter(logger)
    writer.start()
    _log_on_a_thread(logger, "before 1", "before 2").join(10)
    file.wait_for("before 1\nbefore 2\n")
    path.rename(tmp_path / "worker.log.1")
    _log_on_a_thread(logger, "after 1", "after 2").join(10)
    writer.stop()
    handler.close()
    assert (tmp_path / "worker.log.1").read_text() == "before 1\nbefore 2\n"
    assert path.read_text() == "after 1\nafter 2\n"


def test_a_record_reads_as_it_was_when_logged(logger: logging.Logger) -> None:
    stream = StalledStream()
    logger.addHandler(logging.StreamHandler(stream))
    writer = LogWriter(logger)
    writer.start()
    _log_on_a_thread(logger, "first").join(10)
    assert stream.write_started.wait(10)
    # Formatted only once the writer gets to it, after the list has changed.
    ids = ["a"]
    logger.info("ids %s", ids)
    ids.append("b")
    stream.resume.set()
    writer.stop()
    assert stream.getvalue().splitlines() == ["first", "ids ['a']"]


def test_secrets_are_redacted_and_json_keeps_the_traceback_apart(logger: logging.Logger) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactSecrets(["hunter2-secret"]))
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    writer = LogWriter(logger)
    writer.start()
    try:
        raise ValueError("boom with hunter2-secret")
    except ValueError:
        logger.exception("failed with key %s and %s", "sk-abcdef123456", "hunter2-secret")
    writer.stop()

    line = json.loads(stream.getvalue())
    assert line["message"] == "failed with key [redacted] and [redacted]"
    assert line["level"] == "ERROR"
    assert "Traceback" in line["exception"]
    assert "ValueError: boom with [redacted]" in line["exception"]
    assert "hunter2" not in stream.getvalue() and "sk-abcdef" not in stream.getvalue()


def test_write_in_background_moves_a_logger_once(logger: logging.Logger) -> None:
    stream = io.StringIO()
    logger.addHandler(logging.StreamHandler(stream))
    writer = write_in_background(logger)
    assert writer is not None
    assert write_in_background(logger) is None  # already moved
    logger.info("through the writer")
    writer.stop()
    assert stream.getvalue() == "through the writer\n"
    assert write_in_background(logging.getLogger(f"no.handlers.{uuid.uuid4().hex}")) is None


def test_a_worker_whose_log_pipe_is_not_read_still_runs_its_jobs(
    own_database_settings: tuple[str, Engine],
    own_queue: str,
    fake_gateway: Any,
    service_env: dict[str, str],
) -> None:
    """The worker's output goes to a pipe of one page that nobody reads once the worker is
    ready: its log lines (DEBUG, several per job) fill it within a few jobs. Every job still
    ends, and once the pipe is read again every job's line is there."""
    url, _ = own_database_settings
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, F_SETPIPE_SZ, 4096)
    env = {**os.environ, **service_env, "DATABASE_URL": url, "EZQ_QUEUE": own_queue}
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "worker"],
        env=env,
        stdout=write_end,
        stderr=subprocess.STDOUT,
        cwd="/",
    )
    os.close(write_end)
    output = bytearray()
    try:
        deadline = time.monotonic() + 60
        while b" ready." not in output:
            assert proc.poll() is None, output.decode(errors="replace")
            assert time.monotonic() < deadline, output.decode(errors="replace")
            if select.select([read_end], [], [], 0.5)[0]:
                output += os.read(read_end, 65536)
        # From here on nobody reads the pipe until every job has ended.
        jobs = [
            enqueue_completion("glm-5.1", [{"role": "user", "content": f"unread {i}"}])
            for i in range(40)
        ]
        for job in jobs:
            assert wait_for_job(job, timeout=60)["status"] == "succeeded"
        proc.terminate()
        while chunk := os.read(read_end, 65536):
            output += chunk
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(read_end)
        drop_queue(own_queue)
    log = output.decode(errors="replace")
    assert len(output) > 4096 * 4, "the worker wrote too little to fill the pipe"
    ended = set(re.findall(r"\[job=([0-9a-f-]{36}) [^]]*\] succeeded: ", log))
    assert {str(job) for job in jobs} <= ended, log

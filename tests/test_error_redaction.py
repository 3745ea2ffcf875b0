"""Gateway error text is redacted like a log line before it is stored, answered or sent."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from service.db.migrate import throwaway_database
from service.errors import GatewayServerError, PermanentGatewayError
from tests.conftest import ADMIN_DSN, places_holding, run_ezq, sql
from tests.test_faults import wait_until

# Not key-shaped on purpose: only the exact-value redaction of the configured key catches it.
ECHOED_KEY = "plainkey" + secrets.token_hex(16)


class _Answering400(BaseHTTPRequestHandler):
    """An upstream that answers every request 400 with the message ``message`` makes."""

    def message(self, sent: bytes) -> str:
        raise NotImplementedError

    def do_POST(self) -> None:
        sent = self.rfile.read(int(self.headers.get("content-length") or 0))
        body = json.dumps({"error": {"message": self.message(sent)}}).encode()
        self.send_response(400)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class _EchoingUpstream(_Answering400):
    """An upstream that answers 400 and quotes the caller's key."""

    def message(self, sent: bytes) -> str:
        key = str(self.headers.get("authorization")).removeprefix("Bearer ")
        return f"unknown key {key}"


@pytest.fixture
def echoing_upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoingUpstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_gateway_error_messages_are_redacted_at_construction(monkeypatch: Any) -> None:
    """A configured secret and key-shaped strings in an upstream message never survive."""
    from service.config import get_settings

    monkeypatch.setenv("EZROUTER_API_KEY", ECHOED_KEY)
    get_settings.cache_clear()
    try:
        for cls in (PermanentGatewayError, GatewayServerError):
            error = cls(f"echo {ECHOED_KEY} and sk-abcdef123456 and Bearer tok", status=400)
            assert ECHOED_KEY not in error.describe()
            assert "sk-abcdef123456" not in error.message
            assert error.message == "echo [redacted] and [redacted] and Bearer [redacted]"
    finally:
        get_settings.cache_clear()


def test_echoed_key_is_not_stored_answered_or_logged(
    echoing_upstream: str, worker_factory: Callable[..., Any], test_ids: dict[str, str]
) -> None:
    """An upstream 400 quoting the key fails the job with the key redacted everywhere."""
    # A database of its own: every worker on a database may run any of its jobs (and the
    # sweep of any of them republishes one whose message it does not see), so only there
    # is this worker, with its echoing upstream, the one that runs the job.
    with throwaway_database(ADMIN_DSN, prefix="ezq_test_echo") as database:
        env = {
            "DATABASE_URL": database,
            "EZROUTER_BASE_URL": echoing_upstream,
            "EZROUTER_API_KEY": ECHOED_KEY,
            "EZQ_QUEUE": test_ids["queue"] + "-echo",
        }
        worker = worker_factory(env=env)
        done = run_ezq("enqueue", "--model", "m", "--wait", "--timeout", "30", "hi", env=env)
        job = json.loads(done.stdout)
        assert job["status"] == "failed", done.stderr
        assert job["error"]["message"] == "HTTP 400: unknown key [redacted]"
        assert sql(
            "SELECT error FROM job_attempts WHERE job_id = :j", database=database, j=job["job_id"]
        ) == [("unknown key [redacted]",)]
        shown = run_ezq("show", job["job_id"], env=env)
        assert shown.returncode == 0 and job["job_id"] in shown.stdout
        assert ECHOED_KEY not in shown.stdout + done.stdout + done.stderr
        assert places_holding(ECHOED_KEY, database) == []
        assert ECHOED_KEY not in worker.log()


class _QuotingUpstream(_Answering400):
    """An upstream that answers 400 quoting the prompt, as real ones do for bad input."""

    def message(self, sent: bytes) -> str:
        return f"invalid content: {json.loads(sent)['messages'][-1]['content']}"


def test_a_gateway_message_quoting_the_prompt_is_stored_not_logged(
    worker_factory: Callable[..., Any], test_ids: dict[str, str]
) -> None:
    """The gateway's own words may quote the prompt: the job and its attempt keep them (the
    producer reads them), the worker's lines and Celery's say the status only."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _QuotingUpstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    marker = "quoted-" + secrets.token_hex(8)
    try:
        with throwaway_database(ADMIN_DSN, prefix="ezq_test_quote") as database:
            env = {
                "DATABASE_URL": database,
                "EZROUTER_BASE_URL": f"http://127.0.0.1:{server.server_address[1]}/v1",
                "EZQ_QUEUE": test_ids["queue"] + "-quote",
            }
            worker = worker_factory(env=env)
            done = run_ezq("enqueue", "-m", "m", "--wait", "--timeout", "30", marker, env=env)
            job = json.loads(done.stdout)
            assert job["status"] == "failed", done.stderr
            assert job["error"]["message"] == f"HTTP 400: invalid content: {marker}"
            assert sql(
                "SELECT error FROM job_attempts WHERE job_id = :j",
                database=database,
                j=job["job_id"],
            ) == [(f"invalid content: {marker}",)]
            line = "HTTP 400: the gateway's message is stored with the attempt, not logged"
            wait_until(lambda: "raised expected: JobFailed" in worker.log(), "Celery's line")
            log = worker.log()
            assert line in log
            assert marker not in log
    finally:
        server.shutdown()
        server.server_close()

"""Options that cannot work are refused in one clear line, before anything happens:
`ezq enqueue --wait --follow` (nothing enqueued) and `ezq fake-gateway` on a busy port."""

from __future__ import annotations

import socket
import subprocess
import uuid

import pytest

from tests.conftest import run_ezq, sql


@pytest.mark.usefixtures("service_env")
def test_enqueue_refuses_wait_with_follow_before_enqueueing(own_queue: str) -> None:
    """--wait and --follow together are a usage error (exit 2) and no job is written."""
    key = uuid.uuid4().hex

    try:
        done = run_ezq(
            "enqueue", "--model", "glm-5.1", "--idempotency-key", key, "--wait", "--follow", "x",
            timeout=30,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("--wait --follow was accepted: it enqueued and followed the job")

    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "Error: --wait and --follow cannot go together: choose one"
    )
    assert done.stdout == ""
    assert sql("SELECT count(*) FROM jobs WHERE idempotency_key = :k", k=key) == [(0,)]


def test_fake_gateway_on_a_busy_port_is_one_line() -> None:
    """A port another process listens on is one line naming it, exit 2, no traceback."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]

        done = run_ezq("fake-gateway", "--port", str(port), timeout=30)

    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.strip().splitlines() == [
        f"ezq: configuration error: --port: cannot listen on 127.0.0.1:{port}:"
        " Address already in use"
    ]

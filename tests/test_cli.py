"""The ``ezq`` command line, run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from typing import Any

import pytest

from tests.conftest import request_for, run_ezq, sql

ezq = run_ezq


@pytest.mark.usefixtures("worker")
def test_enqueue_wait_show_and_conversation(service_env: dict[str, str], fake_gateway: Any) -> None:
    """enqueue --wait prints the finished job; show and conversation print the same data."""
    done = ezq(
        "enqueue",
        "--model",
        "kimi-k2.6",
        "--system",
        "be kind",
        "--tenant",
        "cli",
        "--meta",
        "feature=cli",
        "--meta",
        "n=3",
        "--param",
        "temperature=0.3",
        "--wait",
        "hello cli",
        env=service_env,
    )
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["status"] == "succeeded"
    assert job["content"] == "echo[2]: hello cli"
    assert job["metadata"] == {"feature": "cli", "n": 3}
    assert request_for(fake_gateway, "hello cli").body["temperature"] == 0.3

    shown = ezq("show", job["job_id"], env=service_env)
    assert shown.returncode == 0
    assert json.loads(shown.stdout)["usage"] == job["usage"]

    second = ezq(
        "enqueue",
        "-m",
        "kimi-k2.6",
        "--conversation",
        job["conversation_id"],
        "--tenant",
        "cli",
        "--wait",
        "again",
        env=service_env,
    )
    assert json.loads(second.stdout)["content"] == "echo[4]: again"
    conv = json.loads(ezq("conversation", job["conversation_id"], env=service_env).stdout)
    assert [m["role"] for m in conv["messages"]] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    assert len(conv["jobs"]) == 2


def test_enqueue_prints_the_job_id(service_env: dict[str, str]) -> None:
    """Without --wait, enqueue prints only the new job's id."""
    out = ezq(
        "enqueue", "--model", "glm-5.1", "--idempotency-key", uuid.uuid4().hex, "x", env=service_env
    )
    assert out.returncode == 0, out.stderr
    job_id = uuid.UUID(out.stdout.strip())
    assert sql("SELECT model FROM jobs WHERE id = :j", j=job_id) == [("glm-5.1",)]


def test_wait_timeout_has_its_own_exit_status(service_env: dict[str, str]) -> None:
    """--wait that runs out of --timeout prints the job as it stands and exits 124, not 1
    (a failed job's): the job is still going, and a script must tell the two apart."""
    # A queue no worker consumes: the job stays queued for as long as the test looks.
    env = {**service_env, "EZQ_QUEUE": f"nobody-{uuid.uuid4().hex[:8]}"}
    out = ezq("enqueue", "--model", "m", "--wait", "--timeout", "0.3", "still queued", env=env)
    try:
        assert out.returncode == 124, out.stderr
        job = json.loads(out.stdout)
        assert job["status"] == "queued"
        assert f"job {job['job_id']} still queued after 0.3s" in out.stderr
    finally:
        if out.stdout.strip():
            ezq("cancel", json.loads(out.stdout)["job_id"], env=env)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["enqueue", "--model", "", "hi"], "model: must not be empty"),
        (["enqueue", "--model", "m", "--param", "temperature=9", "hi"], "params.temperature"),
        (["enqueue", "--model", "m", "--param", "bogus", "hi"], "KEY=VALUE"),
        (
            ["enqueue", "--model", "m", "--conversation", str(uuid.UUID(int=1)), "hi"],
            "no conversation",
        ),
        (["show", str(uuid.UUID(int=2))], "no job"),
        (["show", "nope"], "is not a UUID"),
        (["conversation", str(uuid.UUID(int=3))], "no conversation"),
    ],
)
def test_errors_are_one_clear_line(
    service_env: dict[str, str], args: list[str], expected: str
) -> None:
    """Bad input exits non-zero with one line naming the problem, and no traceback."""
    out = ezq(*args, env=service_env)
    assert out.returncode != 0
    assert expected in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"EZQ_MAX_ATTEMPTS": "lots"}, "EZQ_MAX_ATTEMPTS"),
        ({"DATABASE_URL": "mysql://admin:hunter2@db/ezq"}, "DATABASE_URL"),
        ({"CELERY_BROKER_URL": "kafka://guest@localhost//"}, "CELERY_BROKER_URL"),
        # kombu takes it, but not the Redis client the worker's sweep and live tokens use.
        ({"CELERY_BROKER_URL": "redis+socket:///tmp/redis.sock"}, "CELERY_BROKER_URL"),
        ({"EZQ_LIVE_REDIS_URL": "redis+socket:///tmp/redis.sock"}, "EZQ_LIVE_REDIS_URL"),
        ({"EZQ_SWEEP_INTERVAL": "inf"}, "EZQ_SWEEP_INTERVAL"),
        ({"EZQ_LEASE_SECONDS": "nan"}, "EZQ_LEASE_SECONDS"),
        # Sweeps a lease apart would never take a dead worker's jobs over.
        ({"EZQ_SWEEP_INTERVAL": "60"}, "EZQ_SWEEP_INTERVAL"),
        # A live stream must outlast the attempt writing to it (its TTL is set once).
        ({"EZQ_GATEWAY_ATTEMPT_DEADLINE": "3600"}, "EZQ_LIVE_TTL"),
        ({"EZROUTER_BASE_URL": "ftp://x"}, "EZROUTER_BASE_URL"),
        ({"EZQ_GATEWAY_READ_TIMEOUT": "-1"}, "EZQ_GATEWAY_READ_TIMEOUT"),
        ({"EZQ_SURFACE_DEFAULTS": "claude-*=anthropc"}, "EZQ_SURFACE_DEFAULTS"),
        ({"EZROUTER_ANTHROPIC_BASE_URL": "ftp://x"}, "EZROUTER_ANTHROPIC_BASE_URL"),
        ({"EZQ_WORKER_GC_THRESHOLDS": "50000,20"}, "EZQ_WORKER_GC_THRESHOLDS"),
        ({"EZQ_WORKER_GC_THRESHOLDS": "50000,0,100"}, "EZQ_WORKER_GC_THRESHOLDS"),
        ({"EZQ_WORKER_GC_THRESHOLDS": "1" + "0" * 12 + ",20,100"}, "EZQ_WORKER_GC_THRESHOLDS"),
    ],
)
def test_bad_settings_fail_with_one_line(env: dict[str, str], expected: str) -> None:
    """A malformed variable fails at start-up with one line naming it, never a traceback."""
    out = ezq("enqueue", "--model", "m", "hi", env=env)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert expected in lines[0]
    assert "hunter2" not in out.stderr, "a URL's password is never echoed"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["-P", "prefork"], "-P"),
        (["--pool=prefork"], "--pool"),
        (["-Qjobs"], "-Q"),
        (["-Qhigh"], "-Q"),  # its "h" is not read as -h (help, exit 0)
        (["-Phigh"], "-P"),
        (["--", "-Q", "high"], "-Q"),
        (["-EQ", "high"], "-Q"),  # Celery reads -E -Q high
        (["-c", "4", "--queues", "other"], "--queues"),
    ],
)
def test_worker_refuses_the_options_it_sets_itself(
    service_env: dict[str, str], args: list[str], named: str
) -> None:
    """The pool and the queue are the worker's own (under prefork, its heartbeat renewed
    no job's lease): passed on to Celery they are refused in one line, naming the option."""
    out = ezq("worker", *args, env=service_env, timeout=30)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ezq: configuration error: {named}: "), (
        out.stderr
    )


def test_worker_passes_celery_s_own_arguments_on_as_written(service_env: dict[str, str]) -> None:
    """``-nworker1@%h`` is Celery's hostname, not a cluster of short options whose ``h`` is
    ``-h``: the worker goes on to its start-up checks (here the missing key) instead of
    printing its help and exiting 0."""
    env = {**service_env, "EZROUTER_API_KEY": ""}
    out = ezq("worker", "-nworker1@%h", env=env, timeout=30)
    assert out.returncode == 2, out.stdout
    assert "EZROUTER_API_KEY" in out.stderr
    assert "Usage:" not in out.stdout


def test_worker_without_api_key_refuses_to_start(service_env: dict[str, str]) -> None:
    """The worker needs EZROUTER_API_KEY and says so in one line."""
    env = {**service_env, "EZROUTER_API_KEY": ""}
    out = ezq("worker", env=env, timeout=30)
    assert out.returncode == 2
    assert "EZROUTER_API_KEY" in out.stderr
    assert "Traceback" not in out.stderr


def test_unreachable_database_is_one_line() -> None:
    """A database that cannot be reached is reported in one line, password hidden."""
    out = ezq(
        "show",
        str(uuid.UUID(int=4)),
        env={"DATABASE_URL": "postgresql://ezq:hunter2@127.0.0.1:1/ezq"},
    )
    assert out.returncode == 1
    assert "cannot reach the database" in out.stderr
    assert "hunter2" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_db_upgrade_works_from_any_folder(tmp_path: Any) -> None:
    """`ezq db upgrade` creates and migrates a database from outside the checkout."""
    import psycopg

    from tests.conftest import ADMIN_DSN

    name = f"ezq_cli_{uuid.uuid4().hex[:8]}"
    url = ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"
    try:
        out = subprocess.run(
            [sys.executable, "-m", "service", "db", "upgrade"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={**os.environ, "DATABASE_URL": url},
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')

"""Faults recover in seconds: dead workers, lost messages, broker restarts and database
outages, with exactly one gateway call per attempt and nothing billed twice."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest
import redis

from service.fake_gateway import Fault
from service.worker.app import app
from tests.conftest import REDIS_URL, WorkerProcess, run_ezq, sql, sweep_paused, wait_for_job
from tests.private_services import PrivatePostgres, PrivateRedis

MODEL = "glm-5.1"
# Long calls are trickled in 8-character chunks every quarter second.
CHUNK_DELAY = 0.25
SLOW_CALLS = {"EZQ_GATEWAY_ATTEMPT_DEADLINE": "60", "EZQ_GATEWAY_READ_TIMEOUT": "5"}


def slow(marker: str, seconds: float) -> Fault:
    """A reply that takes about ``seconds`` to stream."""
    return Fault(
        kind="normal",
        match=marker,
        reply="x" * 8 * int(seconds / CHUNK_DELAY),
        chunk_delay=CHUNK_DELAY,
    )


def own_queue() -> str:
    return f"ezq-faults-{uuid.uuid4().hex[:8]}"


def enqueue(
    prompt: str, *, env: dict[str, str] | None = None, conversation: str | None = None
) -> str:
    args = ["enqueue", "--model", MODEL, prompt]
    if conversation:
        args[1:1] = ["--conversation", conversation]
    out = run_ezq(*args, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def send_foreign(marker: str, queue: str, **options: Any) -> str:
    """Send a job by task name, request in the kwargs, as a foreign producer does; return
    the message's task id (the job's id)."""
    task_id = str(uuid.uuid4())
    app.send_task(
        "ezq.chat_completion",
        kwargs={"model": MODEL, "messages": [{"role": "user", "content": marker}]},
        task_id=task_id,
        queue=queue,
        **options,
    )
    return task_id


def wait_until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> float:
    """Poll ``check`` until it holds; return how long it took."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, f"{what}: not after {timeout}s"
        time.sleep(0.05)
    return time.monotonic() - start


def requests_for(fake_gateway: Any, marker: str) -> int:
    return sum(1 for r in fake_gateway.requests if marker in str(r.body))


def status_of(job_id: str) -> str:
    return str(sql("SELECT status FROM jobs WHERE id = :j", j=job_id)[0][0])


@pytest.mark.usefixtures("worker")
def test_a_call_longer_than_the_lease_keeps_it_by_heartbeat(
    worker_factory: Callable[..., WorkerProcess], fake_gateway: Any
) -> None:
    """A call three times as long as the lease is never taken over: the heartbeat renews it."""
    queue = own_queue()
    worker_factory(env={**SLOW_CALLS, "EZQ_QUEUE": queue, "EZQ_LEASE_SECONDS": "3"})
    marker = uuid.uuid4().hex
    fake_gateway.add_faults(slow(marker, 9))

    job = wait_for_job(enqueue(marker, env={"EZQ_QUEUE": queue}), timeout=40)

    assert job["status"] == "succeeded"
    assert job["attempts"] == 1
    assert requests_for(fake_gateway, marker) == 1


@pytest.mark.usefixtures("worker")
def test_show_says_who_holds_a_running_job_and_until_when(
    worker_factory: Callable[..., WorkerProcess], fake_gateway: Any, api_server_factory: Any
) -> None:
    """``ezq show`` and ``GET /v1/jobs/{id}`` of a running job name the worker holding it
    and its lease's end."""
    token = "ezq-faults-token-" + uuid.uuid4().hex
    api = api_server_factory(EZQ_API_TOKENS=token)
    queue = own_queue()
    worker_factory(env={**SLOW_CALLS, "EZQ_QUEUE": queue})
    marker = uuid.uuid4().hex
    fake_gateway.add_faults(slow(marker, 10))
    job_id = enqueue(marker, env={"EZQ_QUEUE": queue})
    wait_until(lambda: status_of(job_id) == "running", "job running")
    (holder,) = sql("SELECT lease_holder FROM jobs WHERE id = :j", j=job_id)[0]

    shown = json.loads(run_ezq("show", job_id).stdout)
    served = httpx.get(
        f"{api.url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"}
    ).json()

    assert shown["lease"]["holder"] == holder
    assert holder is not None and holder.split(":")[1].isdigit()
    assert shown["lease"]["expires_at"] > shown["started_at"]
    assert served["status"] == "running" and served["lease"]["holder"] == holder
    assert served["lease"]["expires_at"] > served["started_at"]
    assert wait_for_job(job_id, timeout=30)["lease"] is None


@pytest.mark.usefixtures("worker")
def test_a_killed_workers_job_runs_again_in_seconds_and_its_next_turn_follows(
    worker_factory: Callable[..., WorkerProcess], fake_gateway: Any
) -> None:
    """SIGKILL mid-call: the attempt is marked worker_lost, another worker runs the job
    again within seconds, and the conversation's next turn runs right after it."""
    queue = own_queue()
    doomed = worker_factory(env={**SLOW_CALLS, "EZQ_QUEUE": queue})
    marker = uuid.uuid4().hex
    fake_gateway.add_faults(slow(marker, 20))
    first = enqueue(marker, env={"EZQ_QUEUE": queue})
    (conversation,) = sql("SELECT conversation_id FROM jobs WHERE id = :j", j=first)[0]
    second = enqueue(f"then {marker}", env={"EZQ_QUEUE": queue}, conversation=str(conversation))
    wait_until(lambda: requests_for(fake_gateway, marker) == 1, "first call under way")

    doomed.kill()
    killed_at = time.monotonic()
    job = wait_for_job(first, timeout=60)
    recovered_in = time.monotonic() - killed_at
    after = wait_for_job(second, timeout=30)

    assert job["status"] == "succeeded" and job["attempts"] == 2
    assert after["status"] == "succeeded"
    assert recovered_in < 20, f"recovery took {recovered_in:.1f}s"
    assert sql(
        "SELECT attempt, error_type FROM job_attempts WHERE job_id = :j ORDER BY attempt", j=first
    ) == [(1, "worker_lost"), (2, None)]
    assert requests_for(fake_gateway, marker) == 3  # two attempts of the first, one second


def test_a_foreign_message_taken_by_a_dead_worker_comes_back(
    service_env: dict[str, str],
    worker_factory: Callable[..., WorkerProcess],
    fake_gateway: Any,
) -> None:
    """A send_task message a worker had taken but not turned into a job row runs after the
    worker is killed, within the broker's visibility timeout, exactly once."""
    queue = own_queue()
    env = {"EZQ_QUEUE": queue, "EZQ_BROKER_VISIBILITY_TIMEOUT": "10"}
    doomed = worker_factory(env=env)
    marker = uuid.uuid4().hex
    # Held by the worker, unacknowledged, with no row yet.
    task_id = send_foreign(marker, queue, countdown=4)
    wait_until(lambda: f"[{task_id}] received" in doomed.log(), "message taken")
    assert sql("SELECT count(*) FROM jobs WHERE id = :j", j=task_id) == [(0,)]

    doomed.kill()
    killed_at = time.monotonic()
    worker_factory(env=env)
    wait_until(
        lambda: sql("SELECT count(*) FROM jobs WHERE id = :j", j=task_id) == [(1,)],
        "job row",
        timeout=40,
    )
    job = wait_for_job(task_id, timeout=20)

    assert job["status"] == "succeeded"
    assert time.monotonic() - killed_at < 40
    assert requests_for(fake_gateway, marker) == 1


def test_a_foreign_message_that_arrives_while_the_database_is_down_runs_once_it_is_back(
    service_env: dict[str, str],
    worker_factory: Callable[..., WorkerProcess],
    fake_gateway: Any,
) -> None:
    """A send_task message whose job row cannot be written yet (Postgres down) is not
    dropped: it comes back with its arguments, and the job runs once Postgres is back."""
    with PrivatePostgres() as database:
        queue = own_queue()
        worker = worker_factory(env={"DATABASE_URL": database.url, "EZQ_QUEUE": queue})
        database.stop()
        marker = uuid.uuid4().hex
        task_id = send_foreign(marker, queue)
        wait_until(lambda: "not created yet; retrying" in worker.log(), "creation refused")
        database.start()

        def status() -> tuple[Any, ...] | None:
            with psycopg.connect(database.url) as conn:
                return conn.execute("SELECT status FROM jobs WHERE id = %s", (task_id,)).fetchone()

        wait_until(lambda: status() == ("succeeded",), "job succeeded", timeout=60)
        assert requests_for(fake_gateway, marker) == 1
        assert worker.proc.poll() is None, "the worker exited"


def test_jobs_whose_messages_were_flushed_are_dispatched_again(
    service_env: dict[str, str],
    worker_factory: Callable[..., WorkerProcess],
    fake_gateway: Any,
) -> None:
    """After the broker loses its queue, pending jobs run again within seconds."""
    queue = own_queue()
    markers = [uuid.uuid4().hex for _ in range(3)]
    jobs = [enqueue(m, env={"EZQ_QUEUE": queue}) for m in markers]
    client = redis.Redis.from_url(REDIS_URL)
    assert client.llen(queue) == 3
    client.delete(queue)  # the broker flushed

    worker_factory(env={"EZQ_QUEUE": queue, "EZQ_REDISPATCH_AFTER": "2"})
    done = [wait_for_job(j, timeout=30) for j in jobs]

    assert [j["status"] for j in done] == ["succeeded"] * 3
    assert all(requests_for(fake_gateway, m) == 1 for m in markers)


def test_the_worker_survives_a_broker_restart_and_enqueue_never_blocks(
    service_env: dict[str, str],
    worker_factory: Callable[..., WorkerProcess],
    fake_gateway: Any,
) -> None:
    """With the broker down, enqueue returns the id within two seconds with one warning
    line; the same worker process runs the job soon after the broker is back."""
    # A database of its own: no other test's worker may sweep the parked job onto a broker
    # that is up.
    with PrivateRedis() as broker, PrivatePostgres() as database:
        env = {
            "CELERY_BROKER_URL": broker.url,
            "DATABASE_URL": database.url,
            "EZQ_QUEUE": own_queue(),
        }

        def job_row(job_id: str) -> tuple[Any, ...] | None:
            with psycopg.connect(database.url) as conn:
                return conn.execute(
                    "SELECT status, needs_publish FROM jobs WHERE id = %s", (job_id,)
                ).fetchone()

        worker = worker_factory(env=env)
        before = run_ezq("enqueue", "--model", MODEL, "before", env=env).stdout.strip()
        wait_until(lambda: job_row(before) == ("succeeded", False), "first job", timeout=30)

        # The same command with the broker up: its start-up, imports and transaction.
        started = time.monotonic()
        run_ezq("enqueue", "--model", MODEL, "baseline", env=env)
        baseline = time.monotonic() - started
        broker.stop()
        started = time.monotonic()
        out = run_ezq("enqueue", "--model", MODEL, "while down", env=env)
        took = time.monotonic() - started - baseline
        assert out.returncode == 0, out.stderr
        job_id = out.stdout.strip()
        assert uuid.UUID(job_id)
        assert took < 2.5, f"enqueue blocked {took:.1f}s longer than with the broker up"
        assert "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert "dispatched when it is back" in out.stderr
        # Flagged for the sweep, which keeps the flag for as long as the broker is down.
        wait_until(lambda: job_row(job_id) == ("queued", True), "job flagged", timeout=10)

        broker.start()
        back_at = time.monotonic()
        wait_until(lambda: job_row(job_id) == ("succeeded", False), "job run", timeout=60)
        assert time.monotonic() - back_at < 30
        assert worker.proc.poll() is None, "the worker exited"


def test_a_webhook_whose_message_was_lost_is_sent_within_seconds(
    service_env: dict[str, str], worker_factory: Callable[..., WorkerProcess]
) -> None:
    """A delivery committed as published whose message never reached the broker (its
    worker died between the commit and the publish) is sent again as soon as the sweep
    sees the broker hold fewer messages than it should, not after the 2-minute grace."""
    import base64
    import secrets

    from service.webhooks.testing import Receiver

    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    with PrivatePostgres() as database, Receiver([secret]) as receiver:
        env = {
            "DATABASE_URL": database.url,
            "EZQ_QUEUE": own_queue(),
            "EZQ_REDISPATCH_AFTER": "2",
            "WEBHOOK_SECRET": secret,
            "WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
        }
        worker_factory(env=env)
        out = run_ezq(
            "enqueue", "--model", MODEL, "--callback-url", receiver.url("/hook"), "hook", env=env
        )
        assert out.returncode == 0, out.stderr
        (first,) = receiver.wait_for(1, "/hook", timeout=30)

        def delivered() -> bool:
            with psycopg.connect(database.url) as conn:
                row = conn.execute("SELECT status FROM webhook_deliveries").fetchone()
            return row is not None and row[0] == "delivered"

        # The receiver has the POST before the worker records it: wait for that record, or
        # it would overwrite the state set below.
        wait_until(delivered, "first delivery recorded", timeout=30)
        with psycopg.connect(database.url) as conn:
            # The state a worker killed right after its commit leaves: due, marked as
            # published, no message anywhere.
            conn.execute(
                "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = now(),"
                " dispatched_at = now(), delivered_at = NULL"
            )
        lost_at = time.monotonic()

        again = receiver.wait_for(2, "/hook", timeout=30)[1]

        assert time.monotonic() - lost_at < 20
        assert again.webhook_id == first.webhook_id, "the same event, sent again"


def test_a_database_outage_while_saving_does_not_bill_twice(
    service_env: dict[str, str],
    worker_factory: Callable[..., WorkerProcess],
    fake_gateway: Any,
) -> None:
    """Postgres stops during a call and stays down past the lease: the reply is saved when
    it returns, by the same attempt, with one gateway call and one usage row."""
    with PrivatePostgres() as database:
        env = {**SLOW_CALLS, "DATABASE_URL": database.url, "EZQ_QUEUE": own_queue()}
        worker = worker_factory(env=env)
        marker = uuid.uuid4().hex
        fake_gateway.add_faults(slow(marker, 3))
        job_id = enqueue(marker, env=env)
        wait_until(lambda: requests_for(fake_gateway, marker) == 1, "call under way")

        database.stop()
        time.sleep(10)  # the outage itself: longer than the lease and many sweep intervals
        database.start()

        def final() -> tuple[Any, ...] | None:
            try:
                with psycopg.connect(database.url) as conn:
                    row = conn.execute(
                        "SELECT status, attempts FROM jobs WHERE id = %s", (job_id,)
                    ).fetchone()
            except psycopg.OperationalError:
                return None
            return row if row and row[0] in ("succeeded", "failed", "cancelled") else None

        wait_until(lambda: final() is not None, "job ended", timeout=60)
        with psycopg.connect(database.url) as conn:
            attempts = conn.execute(
                "SELECT attempt, error_type FROM job_attempts WHERE job_id = %s", (job_id,)
            ).fetchall()
            usage = conn.execute(
                "SELECT count(*) FROM token_usage WHERE job_id = %s", (job_id,)
            ).fetchone()
        assert final() == ("succeeded", 1)
        assert attempts == [(1, None)]
        assert usage == (1,)
        assert requests_for(fake_gateway, marker) == 1
        assert "recorded after" in worker.log()


def test_worker_with_beat_flag_leaves_no_orphan(
    service_env: dict[str, str], worker_factory: Callable[..., WorkerProcess]
) -> None:
    """``ezq worker -B`` starts no separate beat process that could outlive it."""
    worker = worker_factory(env={"EZQ_QUEUE": own_queue()}, args=["-B"])
    assert "-B is not needed" in worker.log()
    children = [
        pid
        for pid in os.listdir("/proc")
        if pid.isdigit() and _parent_of(int(pid)) == worker.proc.pid
    ]
    assert children == []
    worker.proc.send_signal(signal.SIGKILL)
    worker.proc.wait()


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


@pytest.mark.usefixtures("service_env")
def test_a_sweep_steps_aside_while_another_runs() -> None:
    """While one sweep holds the lock, a periodic one returns without doing anything, and a
    forced one that may wait only so long gives up; once it is released the next one runs."""
    from sqlalchemy import text

    from service.config import get_settings
    from service.db.session import get_engine
    from service.worker import sweep as sweep_module

    settings = get_settings()
    with get_engine().connect() as holder:
        holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": sweep_module._LOCK_KEY})
        try:
            assert (
                sweep_module.sweep(
                    settings.model_copy(update={"ezq_sweep_interval": 0.001}), worker="test"
                )
                is None
            )
            assert sweep_module.sweep(settings, worker="test", force=True, lock_wait_s=0.2) is None
        finally:
            holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": sweep_module._LOCK_KEY})
            holder.commit()
    assert sweep_module.sweep(settings, worker="test", force=True) is not None


@pytest.mark.usefixtures("service_env")
def test_a_forced_sweep_waits_for_the_running_one_then_runs() -> None:
    """The ``ezq.sweep`` task's sweep, asked for while another runs, runs once that one ends
    (a sweep that started before its caller's rows were written may have missed them)."""
    import threading

    from service.config import get_settings
    from service.worker import sweep as sweep_module

    reports: list[object] = []
    forced = threading.Thread(
        target=lambda: reports.append(sweep_module.sweep(get_settings(), worker="test", force=True))
    )
    with sweep_paused() as paused:
        forced.start()
        paused.wait_for_forced_sweep(timeout=10)
        assert reports == []
    forced.join(timeout=30)
    assert len(reports) == 1 and reports[0] is not None


@pytest.mark.usefixtures("service_env", "own_database_settings")
def test_one_sweep_per_interval_across_processes() -> None:
    """A sweep that is not forced does nothing when another ran within the interval (on a
    database of its own, where no worker's sweep holds the lock or took the turn)."""
    from service.config import get_settings
    from service.worker.sweep import sweep

    settings = get_settings().model_copy(update={"ezq_sweep_interval": 3600.0})
    assert sweep(settings.model_copy(update={"ezq_sweep_interval": 0.001}), worker="t") is not None
    assert sweep(settings, worker="test") is None
    assert sweep(settings, worker="test", force=True) is not None

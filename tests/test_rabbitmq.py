"""RabbitMQ as the broker: the same jobs, the same dead letters for poison messages."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from kombu import Connection

from tests.conftest import WorkerProcess, free_port, run_ezq, sql, wait_for_job

AMQP_URL = os.environ.get("EZQ_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


@pytest.fixture
def amqp_env(service_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """Settings for a worker and producer on RabbitMQ, with a queue of their own."""
    try:
        with Connection(AMQP_URL, connect_timeout=3) as conn:
            conn.connect()
    except Exception as exc:  # a missing service fails the run, never skips it
        pytest.fail(f"RabbitMQ is not reachable at {AMQP_URL}: {exc}")
    queue = f"ezq-amqp-{uuid.uuid4().hex[:8]}"
    yield {"CELERY_BROKER_URL": AMQP_URL, "EZQ_QUEUE": queue}
    with Connection(AMQP_URL) as conn:
        conn.default_channel.queue_delete(queue)


def test_a_job_runs_through_rabbitmq(
    amqp_env: dict[str, str], worker_factory: Callable[..., WorkerProcess], fake_gateway: Any
) -> None:
    """Enqueued with the broker on RabbitMQ, a job is run by a worker on RabbitMQ."""
    worker_factory(env=amqp_env)
    marker = uuid.uuid4().hex
    out = run_ezq("enqueue", "--model", "glm-5.1", marker, env=amqp_env)
    assert out.returncode == 0, out.stderr

    job = wait_for_job(out.stdout.strip())

    assert job["status"] == "succeeded"
    assert marker in job["content"]


def test_poison_messages_on_rabbitmq_are_dead_lettered(
    amqp_env: dict[str, str], worker_factory: Callable[..., WorkerProcess], fake_gateway: Any
) -> None:
    """Undecodable bodies, foreign task names and malformed task bodies on RabbitMQ become
    dead letters; the worker goes on and runs the next job."""
    worker = worker_factory(env=amqp_env)
    queue = amqp_env["EZQ_QUEUE"]
    before = sql("SELECT coalesce(max(id), 0) FROM dead_letters")[0][0]
    with Connection(AMQP_URL) as conn:
        producer = conn.Producer()
        publish = {"routing_key": queue, "exchange": "", "serializer": None}
        producer.publish(
            b"not json", content_type="application/json", content_encoding="utf-8", **publish
        )
        producer.publish(
            json.dumps([1, 2, 3]).encode(),
            content_type="application/json",
            content_encoding="utf-8",
            headers={"task": "ezq.chat_completion", "id": str(uuid.uuid4())},
            **publish,
        )
        producer.publish(
            json.dumps([[], {}, {}]).encode(),
            content_type="application/json",
            content_encoding="utf-8",
            headers={"task": "someone.else", "id": str(uuid.uuid4())},
            **publish,
        )

    deadline = time.monotonic() + 30
    while sql("SELECT count(*) FROM dead_letters WHERE id > :b", b=before)[0][0] < 3:
        assert worker.proc.poll() is None, worker.log()[-3000:]
        assert time.monotonic() < deadline, sql(
            "SELECT reason FROM dead_letters WHERE id > :b", b=before
        )
        time.sleep(0.1)
    out = run_ezq("enqueue", "--model", "glm-5.1", "after the poison", env=amqp_env)
    assert wait_for_job(out.stdout.strip())["status"] == "succeeded"
    reasons = [r for (r,) in sql("SELECT reason FROM dead_letters WHERE id > :b", b=before)]
    assert any("unknown task 'someone.else'" in r for r in reasons), reasons
    assert worker.proc.poll() is None


def test_healthz_checks_a_rabbitmq_broker(
    amqp_env: dict[str, str], api_server_factory: Callable[..., Any]
) -> None:
    """``/healthz`` connects to RabbitMQ as RabbitMQ (it once pinged it as Redis, and
    answered 503 whatever the broker's state), and says when it cannot be reached."""
    up = api_server_factory(**amqp_env)
    response = httpx.get(f"{up.url}/healthz", timeout=10)
    assert (response.status_code, response.json()) == (200, {"database": "ok", "broker": "ok"})

    nobody = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    down = api_server_factory(**{**amqp_env, "CELERY_BROKER_URL": nobody})
    response = httpx.get(f"{down.url}/healthz", timeout=20)
    assert response.status_code == 503
    assert response.json()["database"] == "ok"
    assert response.json()["broker"].startswith("error: ")

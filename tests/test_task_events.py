"""EZQ_TASK_EVENTS: Celery's task events (Flower, `celery events`) on by default, off on
demand, and back on in a running worker with `celery control enable_events`."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

from service import enqueue_completion
from tests.celery_events import EventLog
from tests.conftest import WorkerProcess, wait_for_job

# Sent by the worker that runs the task; the producer's own ``task-sent`` is not its.
WORKER_TASK_EVENTS = {"task-received", "task-started", "task-succeeded"}


def test_task_events_off_until_enabled_remotely(
    worker_factory: Callable[..., WorkerProcess], own_queue: str, fake_gateway: Any
) -> None:
    from service.worker.app import app

    node = f"events-off-{secrets.token_hex(3)}"
    worker = worker_factory(
        env={"EZQ_QUEUE": own_queue, "EZQ_TASK_EVENTS": "false"}, args=["-n", f"{node}@%h"]
    )
    with EventLog() as events:
        quiet = enqueue_completion("glm-5.1", [{"role": "user", "content": "events off"}])
        assert wait_for_job(quiet)["status"] == "succeeded"
        # The worker still sends its own events; two heartbeats after the job ended mean
        # its task events, had there been any, were sent before them.
        beats = events.count("worker-heartbeat", node)
        deadline = time.monotonic() + 15
        while events.count("worker-heartbeat", node) < beats + 2:
            assert time.monotonic() < deadline, "no heartbeat from the worker"
            time.sleep(0.05)
        sent = {e["type"] for e in events.of_task(str(quiet))}
        assert not sent & WORKER_TASK_EVENTS, sent

        app.control.enable_events()
        deadline = time.monotonic() + 15
        while "Events of group {task} enabled by remote" not in worker.log():
            assert time.monotonic() < deadline, worker.log()
            time.sleep(0.05)
        loud = enqueue_completion("glm-5.1", [{"role": "user", "content": "events on"}])
        assert wait_for_job(loud)["status"] == "succeeded"
        succeeded = events.wait_for("task-succeeded", str(loud))
        assert str(succeeded["hostname"]).startswith(node)

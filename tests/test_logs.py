"""Logs: no prompt or reply text at INFO or above; JSON lines with the job's fields."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from service import enqueue_completion
from service.fake_gateway import Fault
from tests.celery_events import EventLog
from tests.conftest import WorkerProcess, run_ezq, wait_for_job
from tests.private_services import PrivatePostgres
from tests.test_faults import wait_until


def wait_for_line(worker: WorkerProcess, needle: str, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while needle not in (log := worker.log()):
        assert time.monotonic() < deadline, f"{needle!r} never logged:\n{log}"
        time.sleep(0.05)
    return log


def test_prompt_and_reply_text_never_reach_the_log(
    worker_factory: Callable[..., WorkerProcess],
    own_queue: str,
    fake_gateway: Any,
    worker: WorkerProcess,
) -> None:
    """A job with unique markers in its prompt and reply leaves neither in the INFO log."""
    mine = worker_factory(env={"EZQ_QUEUE": own_queue, "EZQ_LOG_LEVEL": "INFO"})
    prompt_marker, reply_marker = uuid.uuid4().hex, uuid.uuid4().hex
    fake_gateway.add_faults(Fault(reply=f"the answer {reply_marker}", match=prompt_marker))
    job_id = enqueue_completion(
        "glm-5.1", [{"role": "user", "content": f"question {prompt_marker}"}], tenant="acme"
    )
    job = wait_for_job(job_id)
    assert job["status"] == "succeeded" and reply_marker in job["content"]

    # Any worker on the database may run the job (flow control claims the best eligible
    # job for whichever message arrives): read every running worker's log.
    def logs() -> str:
        return mine.log() + worker.log()

    def ran(log: str) -> bool:
        return any(f"[job={job_id} " in line and "succeeded:" in line for line in log.splitlines())

    wait_until(lambda: ran(logs()), "the job's end logged", timeout=15)
    log = logs()
    assert prompt_marker not in log and reply_marker not in log
    # Celery's own line for a finished task carries no result.
    finished = [line for line in log.splitlines() if " succeeded in " in line]
    assert not any("content" in line or "the answer" in line for line in finished)

    # The CLI prints the job on request, but logs nothing of it.
    shown = run_ezq("show", str(job_id), env={"EZQ_LOG_LEVEL": "INFO"})
    assert reply_marker in shown.stdout and reply_marker not in shown.stderr


def test_json_logs_carry_job_tenant_and_attempt(
    worker_factory: Callable[..., WorkerProcess], own_queue: str, fake_gateway: Any
) -> None:
    """With EZQ_LOG_FORMAT=json every log line is a JSON object; job lines have the fields."""
    # A database of its own, so that this worker (and no other) runs the job.
    with PrivatePostgres() as database:
        env = {
            "DATABASE_URL": database.url,
            "EZQ_QUEUE": own_queue,
            "EZQ_LOG_LEVEL": "INFO",
            "EZQ_LOG_FORMAT": "json",
        }
        worker = worker_factory(env=env)
        tenant = f"t-{uuid.uuid4().hex[:8]}"
        enqueued = run_ezq("enqueue", "--model", "glm-5.1", "--tenant", tenant, "hi", env=env)
        assert enqueued.returncode == 0, enqueued.stderr
        job_id = enqueued.stdout.strip()
        wait_for_line(worker, f"[{job_id}] succeeded in")

    entries = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    mine = [e for e in entries if e.get("job_id") == str(job_id)]
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    calling = [e for e in mine if e["message"].endswith("messages") and "calling" in e["message"]]
    assert calling and calling[0]["attempt"] == 1 and calling[0]["tenant"] == tenant
    assert any("succeeded in" in e["message"] for e in mine), "Celery's line names the job too"


def test_bad_log_format_is_one_line() -> None:
    """EZQ_LOG_FORMAT other than text or json is refused with one line naming it."""
    done = run_ezq("status", env={"EZQ_LOG_FORMAT": "xml"})
    assert done.returncode == 2
    assert done.stderr.startswith("ezq: configuration error: EZQ_LOG_FORMAT")


def test_reply_text_never_reaches_task_events(
    worker_factory: Callable[..., WorkerProcess], own_queue: str, fake_gateway: Any
) -> None:
    """The task-succeeded event (what Flower and `celery events` record as the task's
    result) holds no reply text; the job's result itself still does."""
    worker_factory(env={"EZQ_QUEUE": own_queue, "EZQ_LOG_LEVEL": "INFO"})
    with EventLog() as events:
        reply_marker = uuid.uuid4().hex
        fake_gateway.add_faults(Fault(reply=f"the answer {reply_marker}", match=reply_marker))
        job_id = enqueue_completion("glm-5.1", [{"role": "user", "content": f"q {reply_marker}"}])
        assert reply_marker in wait_for_job(job_id)["content"]
        succeeded = events.wait_for("task-succeeded", str(job_id))
    assert reply_marker not in json.dumps(succeeded)


def test_celery_receipt_lines_only_at_debug(
    worker_factory: Callable[..., WorkerProcess],
    own_queue: str,
    own_database: tuple[str, Any],
    fake_gateway: Any,
) -> None:
    """At INFO a job's lines are its own (called, ended) and Celery's "succeeded in": not
    Celery's "received" for every message. (The session's worker logs at DEBUG, and its
    log has them: the fault tests wait on them.)"""
    url, _ = own_database
    env = {"DATABASE_URL": url, "EZQ_QUEUE": own_queue, "EZQ_LOG_LEVEL": "INFO"}
    worker = worker_factory(env=env)
    enqueued = run_ezq("enqueue", "--model", "glm-5.1", "receipts", env=env)
    assert enqueued.returncode == 0, enqueued.stderr
    job_id = enqueued.stdout.strip()
    log = wait_for_line(worker, f"[{job_id}] succeeded in")
    assert f"[job={job_id} attempt=1" in log
    assert f"[{job_id}] received" not in log

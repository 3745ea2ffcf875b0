"""Cancelling a job: it never runs, or its in-flight reply is discarded."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from sqlalchemy import text

from service import JobAlreadyFinished, JobNotFound, cancel_job, enqueue_completion, get_job
from service.config import get_settings
from service.db import queries
from service.db.session import transaction
from service.fake_gateway import Fault
from service.validation import validate_request
from service.worker.app import publish_job
from tests.conftest import run_ezq, sql, sweep_paused, wait_for_job

MODEL = "deepseek-v4-pro"


def unpublished_job(prompt: str, **fields: Any) -> uuid.UUID:
    request = validate_request(
        model=MODEL, messages=[{"role": "user", "content": prompt}], **fields
    )
    with transaction() as session:
        job_id, _ = queries.create_job(session, request)
    return job_id


@pytest.mark.usefixtures("worker")
def test_cancelled_queued_job_never_runs(fake_gateway: Any) -> None:
    """A queued job that is cancelled is never sent to the gateway, even when delivered."""
    marker = uuid.uuid4().hex
    job_id = unpublished_job(f"never {marker}")

    view = cancel_job(job_id)
    publish_job(job_id)
    time.sleep(1.0)

    assert view["status"] == "cancelled"
    assert view["finished_at"] is not None
    assert wait_for_job(job_id)["attempts"] == 0
    assert not any(marker in str(r.body) for r in fake_gateway.requests)


@pytest.mark.usefixtures("worker")
def test_cancelled_running_job_discards_its_reply_but_keeps_its_spend(fake_gateway: Any) -> None:
    """A job cancelled mid-call stays cancelled with no reply, but the call it paid for is
    recorded: a usage row flagged job_cancelled and the attempt's outcome."""
    marker = uuid.uuid4().hex
    # About 2.7 s of stream (frames 0.3 s apart, each within the suite's 1.5 s read timeout
    # and the whole within its 4 s attempt deadline): time to cancel it mid-call.
    fake_gateway.add_faults(
        Fault(kind="normal", reply="a slow reply " * 4, chunk_delay=0.3, match=marker)
    )
    job_id = enqueue_completion(MODEL, [{"role": "user", "content": f"slow {marker}"}])
    deadline = time.monotonic() + 10
    while get_job(job_id)["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.02)

    cancel_job(job_id)
    deadline = time.monotonic() + 15  # the in-flight call finishes meanwhile
    while sql("SELECT count(*) FROM token_usage WHERE job_id = :j", j=job_id) == [(0,)]:
        assert time.monotonic() < deadline, "the cancelled call's usage was never recorded"
        time.sleep(0.05)

    job = get_job(job_id)
    assert job["status"] == "cancelled"
    assert job["content"] is None
    assert job["usage"] is not None and job["usage"]["total_tokens"] > 0
    assert sql("SELECT count(*) FROM messages WHERE job_id = :j", j=job_id) == [(0,)]
    assert sql("SELECT job_cancelled FROM token_usage WHERE job_id = :j", j=job_id) == [(True,)]
    ((error_type, http_status, request_id, surface),) = sql(
        "SELECT error_type, http_status, gateway_request_id, surface FROM job_attempts"
        " WHERE job_id = :j",
        j=job_id,
    )
    assert (error_type, http_status, surface) == ("cancelled", 200, "openai")
    assert request_id is not None
    # The spend counts in the cost views like any other.
    assert sql(
        "SELECT count(*) FROM job_costs WHERE job_id = :j AND total_tokens > 0", j=job_id
    ) == [(1,)]


@pytest.mark.usefixtures("worker")
def test_cancelling_a_turn_lets_the_next_one_run(fake_gateway: Any) -> None:
    """Cancelling a turn that holds back the next one wakes that turn at once."""
    first = wait_for_job(enqueue_completion(MODEL, [{"role": "user", "content": "one"}]))
    blocked_by = unpublished_job("never sent", conversation_id=first["conversation_id"])
    after = enqueue_completion(
        MODEL, [{"role": "user", "content": "three"}], conversation_id=first["conversation_id"]
    )
    time.sleep(0.3)
    assert get_job(after)["status"] == "queued"

    cancel_job(blocked_by)

    assert wait_for_job(after, timeout=10)["content"] == "echo[3]: three"


@pytest.mark.usefixtures("service_env")
def test_cancel_is_idempotent_and_refused_for_ended_jobs() -> None:
    """Cancelling twice is fine; a finished job or an unknown id is refused."""
    job_id = unpublished_job("twice")
    assert cancel_job(job_id)["status"] == "cancelled"
    assert cancel_job(job_id)["status"] == "cancelled"

    done = unpublished_job("done")
    with transaction() as session:
        session.execute(
            text("UPDATE jobs SET status = 'succeeded', finished_at = now() WHERE id = :j"),
            {"j": done},
        )
    with pytest.raises(JobAlreadyFinished, match="succeeded"):
        cancel_job(done)
    with pytest.raises(JobNotFound):
        cancel_job(uuid.uuid4())


def test_cancel_writes_a_job_cancelled_webhook(
    service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancelled job with a callback gets a job.cancelled event in the outbox."""
    monkeypatch.setenv("WEBHOOK_SECRET", "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=")
    get_settings.cache_clear()
    try:
        job_id = unpublished_job("hooked", callback_url="https://hooks.example.com/ezq")
        cancel_job(job_id)
    finally:
        get_settings.cache_clear()
    assert sql(
        "SELECT event_type, payload::jsonb -> 'data' ->> 'status' FROM webhook_deliveries"
        " WHERE job_id = :j",
        j=job_id,
    ) == [("job.cancelled", "cancelled")]


def test_cancel_from_the_cli(service_env: dict[str, str]) -> None:
    """`ezq cancel JOB_ID` prints the cancelled job; an ended job exits 1 with one line."""
    # The job has no message: the suite's worker, which sweeps this database every
    # second, would publish and run it before the command cancels it.
    with sweep_paused():
        job_id = unpublished_job("cli")
        out = run_ezq("cancel", str(job_id), env=service_env)
    assert out.returncode == 0, out.stderr
    assert '"status": "cancelled"' in out.stdout
    with transaction() as session:
        session.execute(text("UPDATE jobs SET status = 'failed' WHERE id = :j"), {"j": job_id})
    again = run_ezq("cancel", str(job_id), env=service_env)
    assert again.returncode == 1
    assert "already ended (failed)" in again.stderr

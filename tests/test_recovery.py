"""Jobs whose worker died mid-attempt, and bugs on our side, end visibly."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import text

from service import enqueue_completion
from service.config import get_settings
from service.db import queries
from service.db.session import transaction
from service.fake_gateway import Fault
from service.validation import validate_request
from service.worker.app import publish_job
from service.worker.runner import Finished, run_job
from tests.conftest import sql, sweep_paused, wait_for_job


def stranded_job(prompt: str, *, attempts: int) -> uuid.UUID:
    """A job left running by a worker that died during attempt ``attempts``."""
    request = validate_request(model="glm-5.1", messages=[{"role": "user", "content": prompt}])
    with transaction() as session:
        job_id, _ = queries.create_job(session, request)
        session.execute(
            text(
                "UPDATE jobs SET status = 'running', attempts = :n, started_at = now(),"
                " lease_expires_at = now() - interval '1 minute' WHERE id = :j"
            ),
            {"n": attempts, "j": job_id},
        )
        for n in range(1, attempts + 1):
            session.execute(
                text("INSERT INTO job_attempts (job_id, attempt) VALUES (:j, :n)"),
                {"j": job_id, "n": n},
            )
    return job_id


@pytest.mark.usefixtures("worker")
def test_expired_lease_is_taken_over(fake_gateway: Any) -> None:
    """A job whose worker died is run again; the lost attempt is recorded as worker_lost."""
    job_id = stranded_job("taken over", attempts=1)

    publish_job(job_id)
    job = wait_for_job(job_id)

    assert job["status"] == "succeeded"
    assert job["attempts"] == 2
    assert sql(
        "SELECT attempt, error_type, retryable FROM job_attempts WHERE job_id = :j ORDER BY 1",
        j=job_id,
    ) == [(1, "worker_lost", True), (2, None, None)]


@pytest.mark.usefixtures("worker")
def test_job_that_kills_its_last_attempt_fails(fake_gateway: Any) -> None:
    """When the lost attempt was the last one allowed, the job fails instead of looping."""
    job_id = stranded_job("poison", attempts=3)

    publish_job(job_id)
    job = wait_for_job(job_id)

    assert job["status"] == "failed"
    assert job["attempts"] == 3
    assert job["error"]["type"] == "worker_lost"
    assert not any("poison" in str(r.body) for r in fake_gateway.requests)


class BuggyGateway:
    def complete(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any], surface: str
    ) -> Any:
        raise KeyError("a bug in our own code")


@pytest.mark.usefixtures("service_env")
def test_a_bug_during_the_call_fails_the_job_as_internal_error() -> None:
    """An exception that is not a gateway error fails the job once, as internal_error."""
    request = validate_request(model="glm-5.1", messages=[{"role": "user", "content": "bug"}])
    with transaction() as session:
        job_id, _ = queries.create_job(session, request)

    outcome = run_job(
        job_id, gateway=BuggyGateway(), settings=get_settings(), publish=lambda _: None
    )

    assert isinstance(outcome, Finished)
    assert outcome.result["status"] == "failed"
    assert outcome.result["attempts"] == 1
    assert outcome.result["error"]["type"] == "internal_error"
    assert "KeyError" in outcome.result["error"]["message"]


@pytest.mark.usefixtures("worker")
def test_an_early_message_does_not_skip_the_backoff(fake_gateway: Any) -> None:
    """A retrying job delivered before its retry is due waits for the due time."""
    marker = uuid.uuid4().hex
    # Stranded (running, its lease expired) until the next statement: no sweep in between
    # takes it over and runs it before its retry is due.
    with sweep_paused():
        job_id = stranded_job(f"backoff {marker}", attempts=1)
        with transaction() as session:
            session.execute(
                text(
                    "UPDATE jobs SET status = 'retrying', lease_expires_at = NULL,"
                    " dispatched_at = now() + interval '2 seconds' WHERE id = :j"
                ),
                {"j": job_id},
            )
    (due,) = sql("SELECT extract(epoch FROM dispatched_at) FROM jobs WHERE id = :j", j=job_id)[0]

    publish_job(job_id)
    job = wait_for_job(job_id)

    (request,) = [r for r in fake_gateway.requests if marker in str(r.body)]
    assert job["status"] == "succeeded"
    assert job["attempts"] == 2
    assert request.received_at >= float(due) - 0.05, "the retry ran before its backoff ended"


@pytest.mark.usefixtures("worker")
def test_a_reply_the_database_refuses_fails_the_job_at_once(fake_gateway: Any) -> None:
    """Text Postgres cannot store (a NUL character) fails the job once, not running forever."""
    marker = uuid.uuid4().hex
    fake_gateway.add_faults(Fault(kind="normal", reply="nul \x00 inside", match=marker, times=5))

    job = wait_for_job(enqueue_completion("glm-5.1", [{"role": "user", "content": marker}]))

    assert job["status"] == "failed"
    assert job["attempts"] == 1
    assert job["error"]["type"] == "internal_error"
    assert "could not be stored" in job["error"]["message"]
    assert "inside" not in job["error"]["message"], "the refused text is not quoted"
    assert sum(1 for r in fake_gateway.requests if marker in str(r.body)) == 1


def test_recording_survives_a_short_database_blip(monkeypatch: pytest.MonkeyPatch) -> None:
    """Recording a paid reply is retried in-process when the connection drops briefly."""
    import logging

    from sqlalchemy.exc import OperationalError

    from service.worker import runner

    monkeypatch.setattr(runner.time, "sleep", lambda _: None)
    calls = []

    def record() -> Any:
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("UPDATE jobs", {}, Exception("server closed the connection"))
        return "recorded"

    jlog = runner.JobLog(logging.getLogger("test"), {})
    assert runner._with_db_retries(record, jlog) == "recorded"
    assert len(calls) == 3

"""The periodic sweep republishes jobs whose message was lost, and only those."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from service.db import queries
from service.db.session import transaction
from service.validation import validate_request
from service.worker.app import app
from tests.conftest import sql, sweep_paused, wait_for_job

pytestmark = pytest.mark.usefixtures("worker")


def stored_without_message(
    prompt: str, conversation_id: Any = None, *, retry_due_in_1h: bool = False
) -> uuid.UUID:
    """A job committed as if its producer died before publishing it (an hour ago), or,
    with ``retry_due_in_1h``, a retry not due for an hour: written in one transaction, so
    that no sweep sees it in between."""
    from sqlalchemy import text

    request = validate_request(
        model="glm-5.1",
        messages=[{"role": "user", "content": prompt}],
        conversation_id=conversation_id,
    )
    with transaction() as session:
        job_id, _ = queries.create_job(session, request)
        session.execute(
            text(
                "UPDATE jobs SET dispatched_at = now() - interval '1 hour' WHERE id = :j"
                if not retry_due_in_1h
                else "UPDATE jobs SET status = 'retrying', dispatched_at = now() + interval"
                " '1 hour' WHERE id = :j"
            ),
            {"j": job_id},
        )
    return job_id


def sql_exec(statement: str, **params: Any) -> None:
    from sqlalchemy import text

    with transaction() as session:
        session.execute(text(statement), params)


def run_sweep(service_env: dict[str, str]) -> int:
    """The number of jobs the ``ezq.sweep`` task published; it always runs (never skipped)."""
    return sweep_report(app.send_task("ezq.sweep", queue=service_env["EZQ_QUEUE"]))


def sweep_report(sent: Any) -> int:
    result = sent.get(timeout=60)
    assert "skipped" not in result
    return int(result["jobs"])


def test_lost_message_is_republished_and_the_job_runs(
    service_env: dict[str, str], fake_gateway: Any
) -> None:
    """A queued job whose message never reached the broker is run after the sweep."""
    # The suite's worker sweeps every second by itself: paused, so the job is the
    # ``ezq.sweep`` task's to find.
    with sweep_paused() as paused:
        job_id = stored_without_message("lost")
        assert sql("SELECT status FROM jobs WHERE id = :j", j=job_id) == [("queued",)]
        sent = app.send_task("ezq.sweep", queue=service_env["EZQ_QUEUE"])
        paused.wait_for_forced_sweep()

    assert sweep_report(sent) >= 1
    job = wait_for_job(job_id)

    assert job["status"] == "succeeded"
    assert job["attempts"] == 1


def test_sweep_leaves_alone_what_is_not_lost(
    service_env: dict[str, str], fake_gateway: Any
) -> None:
    """Fresh jobs, turns held back by an earlier turn, and retries not yet due stay put."""
    blocker = stored_without_message("blocker", retry_due_in_1h=True)
    (conversation_id,) = sql("SELECT conversation_id FROM jobs WHERE id = :j", j=blocker)[0]
    held_back = stored_without_message("held back", conversation_id)

    run_sweep(service_env)

    statuses = sql(
        "SELECT id, status, dispatched_at < now() - interval '30 minutes' FROM jobs"
        " WHERE id IN (:a, :b) ORDER BY enqueue_seq",
        a=blocker,
        b=held_back,
    )
    assert statuses == [(blocker, "retrying", False), (held_back, "queued", True)]
    sql_exec("UPDATE jobs SET status = 'failed' WHERE id = :j", j=blocker)

"""A claim that Postgres committed and whose answer the worker lost (its connection cut in
between) is undone by that worker once the database answers again: the job is pending as
it was, with no attempt counted, and runs once, with one attempt row and one call.

Runs on a database of its own (the plain claim path: no flow limits anywhere), reached by
the worker through a proxy that loses Postgres's answer to the claim on cue."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.engine import Engine

from service import enqueue_completion
from service.db import attempts, recovery
from service.db import flow as flow_db
from service.db.session import transaction
from tests.conftest import free_port, wait_for_job
from tests.tcp_proxy import TcpProxy
from tests.test_faults import wait_until
from tests.test_metrics import scrape, value

MODEL = "deepseek-v4-flash"


@pytest.fixture
def database(own_database_settings: tuple[str, Engine]) -> tuple[str, Engine]:
    return own_database_settings


def _one(engine: Engine, query: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(query), params).scalar_one()


def test_a_claim_whose_answer_was_lost_is_undone_and_its_job_runs_once(
    database: tuple[str, Engine], own_queue: str, fake_gateway: Any, worker_factory: Any
) -> None:
    url, engine = database
    marker = f"lost-claim-{uuid.uuid4().hex[:8]}"
    job = enqueue_completion(MODEL, [{"role": "user", "content": marker}])
    target = make_url(url)
    with (
        TcpProxy((target.host or "127.0.0.1", target.port or 5432)) as proxy,
        engine.connect() as holder,
    ):
        # The worker's claim waits on the job's row lock: its statement is in Postgres.
        holder.execute(text("SELECT 1 FROM jobs WHERE id = :id FOR UPDATE"), {"id": job})
        port = free_port()
        worker = worker_factory(
            env={
                "EZQ_QUEUE": own_queue,
                "DATABASE_URL": target.set(port=proxy.port).render_as_string(hide_password=False),
            },
            args=["--metrics-port", str(port)],
        )
        holder_pid = holder.execute(text("SELECT pg_backend_pid()")).scalar_one()
        wait_until(
            lambda: (
                _one(
                    engine,
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE :holder = ANY(pg_blocking_pids(pid))",
                    holder=holder_pid,
                )
                == 1
            ),
            "the worker's claim waiting on the job's lock",
        )
        # Postgres commits the claim; its answer never reaches the worker.
        proxy.swallow_replies()
        holder.commit()
        wait_until(
            lambda: _one(engine, "SELECT status FROM jobs WHERE id = :id", id=job) == "running",
            "the claim committed",
        )
        proxy.cut()
        ended = wait_for_job(job)
    assert ended["status"] == "succeeded"
    assert ended["attempts"] == 1
    assert _one(engine, "SELECT count(*) FROM job_attempts WHERE job_id = :id", id=job) == 1
    assert sum(1 for r in fake_gateway.requests if marker in str(r.body)) == 1
    assert "undid 1 claims whose answer was lost" in worker.log()
    _, samples = scrape(f"http://127.0.0.1:{port}/metrics")
    assert value(samples, "ezq_claims_undone_total") == 1


def test_undoing_lost_claims_touches_only_the_workers_jobs_it_does_not_run(
    database: tuple[str, Engine], own_queue: str
) -> None:
    """``undo_lost_claims`` makes the worker's lost claims pending again as they were before
    (a first attempt queued, a later one retrying with its earlier attempts kept), deletes
    their open attempt and reservation, flags them for publishing; it leaves the jobs the
    worker keeps and other workers' jobs as they are."""
    _, engine = database
    me, other = "host:1:aaaaaa", "host:2:bbbbbb"
    lost_first, lost_later, kept, theirs = (
        enqueue_completion(MODEL, [{"role": "user", "content": f"undo {i}"}]) for i in range(4)
    )
    with transaction() as session:
        for job in (lost_first, lost_later, kept):
            attempts.claim_job(session, job, lease_seconds=60, holder=me)
        attempts.claim_job(session, theirs, lease_seconds=60, holder=other)
        flow_db.admit(
            session,
            job_id=lost_first,
            attempt=1,
            tenant=None,
            model=MODEL,
            tokens=10,
            cost_usd=None,
        )
        # lost_later's first attempt ended; its second is the one lost.
        for statement in (
            "UPDATE job_attempts SET finished_at = now(), error_type = 'server_error'"
            " WHERE job_id = :id",
            "UPDATE jobs SET status = 'retrying', lease_holder = NULL WHERE id = :id",
        ):
            session.execute(text(statement), {"id": lost_later})
        attempts.claim_job(session, lost_later, lease_seconds=60, holder=me)
    with transaction() as session:
        undone = recovery.undo_lost_claims(session, holder=me, keep={kept})
    assert sorted(undone) == sorted([lost_first, lost_later])

    def state(job: uuid.UUID) -> tuple[Any, ...]:
        with engine.connect() as conn:
            return tuple(
                conn.execute(
                    text(
                        "SELECT status, attempts, started_at IS NOT NULL, lease_holder,"
                        " needs_publish,"
                        " (SELECT count(*) FROM job_attempts a WHERE a.job_id = j.id),"
                        " (SELECT count(*) FROM flow_admissions f WHERE f.job_id = j.id)"
                        " FROM jobs j WHERE id = :id"
                    ),
                    {"id": job},
                ).one()
            )

    assert state(lost_first) == ("queued", 0, False, None, True, 0, 0)
    assert state(lost_later) == ("retrying", 1, True, None, True, 1, 0)
    assert state(kept) == ("running", 1, True, me, False, 1, 0)
    assert state(theirs) == ("running", 1, True, other, False, 1, 0)

"""A claim locks only the jobs it may run. Ranking reads the heads of the backlog, which are
the very jobs whose own messages are being claimed at the same moment: the ranking must not
make those claims wait on it. A better job that another claim holds is passed over.

Runs on a database of its own, so that no worker claims or ranks its jobs."""

from __future__ import annotations

import uuid

import pytest
from psycopg.errors import LockNotAvailable
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from service.config import get_settings
from service.db import queries
from service.flow.admission import Admission, admit, rank
from service.validation import validate_request


@pytest.fixture
def engine(own_database: tuple[str, Engine]) -> Engine:
    return own_database[1]


def _jobs(engine: Engine, *priorities: int, tenant: str = "acme") -> list[uuid.UUID]:
    """Queued jobs of ``tenant``, in this enqueue order; no message is published."""
    ids = []
    with Session(engine) as session, session.begin():
        for i, priority in enumerate(priorities):
            request = validate_request(
                model="glm-5.1",
                messages=[{"role": "user", "content": f"job {i}"}],
                tenant=tenant,
                priority=priority,
            )
            ids.append(queries.create_job(session, request)[0])
    return ids


def _admit(session: Session, job_id: uuid.UUID) -> Admission:
    """The claim's admission in ``session``'s transaction, from a ranking read just before."""
    settings = get_settings()
    return admit(session, job_id, rank(session, job_id, settings), settings)


def _set_running(engine: Engine, job_id: uuid.UUID) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE jobs SET status = 'running', attempts = 1, started_at = now(),"
                " lease_expires_at = now() + interval '1 hour' WHERE id = :id"
            ),
            {"id": job_id},
        )


def _lockable(engine: Engine, job_id: uuid.UUID) -> bool:
    """Whether a claim of ``job_id`` would lock it now rather than wait."""
    with engine.connect() as conn, conn.begin():
        try:
            conn.execute(
                text("SELECT 1 FROM jobs WHERE id = :id FOR UPDATE NOWAIT"), {"id": job_id}
            )
        except OperationalError as exc:
            if isinstance(exc.orig, LockNotAvailable):
                return False
            raise
    return True


def test_a_claim_does_not_lock_the_jobs_it_ranked(engine: Engine) -> None:
    first, second, third = _jobs(engine, 5, 5, 5)
    with Session(engine) as claim, claim.begin():
        admission = _admit(claim, third)
        # Among equals a message keeps its own job.
        assert admission.job_id == third
        # The earlier jobs were ranked as candidates, and their own claims go on at once.
        assert _lockable(engine, first)
        assert _lockable(engine, second)
        assert not _lockable(engine, third)  # its own job stays locked until it commits
        claim.rollback()


def test_a_better_job_another_claim_holds_is_passed_over(engine: Engine) -> None:
    best, better, own = _jobs(engine, 9, 8, 5)
    with engine.connect() as other, other.begin():
        # Another claim holds the best job (its own message's claim, say).
        other.execute(text("SELECT 1 FROM jobs WHERE id = :id FOR UPDATE"), {"id": best})
        with Session(engine) as claim, claim.begin():
            admission = _admit(claim, own)
            assert admission.job_id == better
            assert admission.hold is not None
            assert admission.hold.reason == f"outranked by job {better}"
            assert not _lockable(engine, better)  # locked: it is this claim's to run now
            claim.rollback()
        other.rollback()


def test_a_better_job_is_run_in_the_message_s_place(engine: Engine) -> None:
    better, own = _jobs(engine, 9, 5)
    with Session(engine) as claim, claim.begin():
        admission = _admit(claim, own)
        assert admission.job_id == better
        assert not _lockable(engine, better)
        claim.rollback()


def test_a_job_held_by_its_limit_lets_an_equal_job_run_in_its_place(engine: Engine) -> None:
    """The message's own job is held (its tenant is at its concurrency limit): the next
    eligible job, which does not outrank it, is locked and run instead."""
    acme_running, own = _jobs(engine, 5, 5, tenant="acme")
    beta_running, beta = _jobs(engine, 5, 5, tenant="beta")
    _set_running(engine, acme_running)
    _set_running(engine, beta_running)  # one call each: neither tenant outranks the other
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO flow_limits (id, tenant, model, max_concurrent)"
                " VALUES (gen_random_uuid(), 'acme', '*', 1)"
            )
        )
    with Session(engine) as claim, claim.begin():
        admission = _admit(claim, own)
        assert admission.job_id == beta
        assert admission.hold is not None
        assert admission.hold.reason.startswith("max_concurrent 1/1 for tenant=acme")
        assert not _lockable(engine, beta)
        claim.rollback()

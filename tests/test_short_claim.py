"""The short claims: a foreign first turn's (``flow.first_turn_plain``), written claimed
when no job is pending and no limit or budget exists, and a queued job's
(``flow.claim_plain``), claimed by ``ezq_claim_job`` when no other job is pending, it is
not throttled and nothing is configured; otherwise nothing is written or called (the
ranking then decides). Each reads the pending jobs' index, not the table, whatever the
statistics say. Runs on a database of its own: whether any job waits or any limit exists
is database-wide."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service import constants as c
from service.config import get_settings
from service.db import attempts, flow, queries
from service.flow import admission
from service.validation import validate_request
from tests.seeding import queued_first_turns
from tests.table_reads import rows_read
from tests.test_row_plans import CROWD, _generic_plans, _quiet_history

LEASE = flow.Lease(600, "test")


def _first(job_id: uuid.UUID, tenant: str | None = None) -> dict[str, Any]:
    request = validate_request(
        model="glm-5.1", messages=[{"role": "user", "content": "hi"}], tenant=tenant
    )
    return queries.first_turn_values(request, job_id)


@contextmanager
def _autocommit(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn


def _configure(session: Session, what: str) -> None:
    """A flow ``limit`` or ``budget`` of tenant ``t1``: flow control is configured."""
    if what == "limit":
        flow.set_limit(
            session,
            tenant="t1",
            model="*",
            max_concurrent=5,
            requests_per_window=None,
            tokens_per_window=None,
            adaptive_ttft_ms=None,
        )
    else:
        flow.set_budget(session, tenant="t1", model="*", monthly_usd=Decimal("10"))


def _written(conn: Connection, job_id: uuid.UUID) -> tuple[Any, ...]:
    """The job's status and attempts, its attempt rows, and whether its conversation exists."""
    row = conn.execute(
        text(
            "SELECT j.status, j.attempts, j.lease_holder,"
            " (SELECT count(*) FROM job_attempts a WHERE a.job_id = j.id),"
            " EXISTS (SELECT 1 FROM conversations v WHERE v.id = j.conversation_id)"
            " FROM jobs j WHERE j.id = :id"
        ),
        {"id": job_id},
    ).one_or_none()
    return tuple(row) if row is not None else ()


def test_a_first_turn_with_nothing_waiting_is_written_claimed(
    own_database: tuple[str, Engine],
) -> None:
    _, engine = own_database
    job_id = uuid.uuid4()
    with _autocommit(engine) as conn:
        ranking = flow.first_turn_plain(conn, job_id, claim=LEASE, first=_first(job_id, "t1"))
        assert ranking is not None and ranking.claim_row is not None
        assert (ranking.own, ranking.candidates) == (None, [])
        assert not ranking.rules_configured and not ranking.throttled_waiting
        claimed = attempts.claim_outcome(ranking.claim_row, job_id)
        assert isinstance(claimed, attempts.Claimed)
        assert (claimed.attempt, claimed.tenant, claimed.model) == (1, "t1", "glm-5.1")
        assert claimed.messages == [{"role": "user", "content": "hi"}]
        assert _written(conn, job_id) == ("running", 1, "test", 1, True)


@pytest.mark.parametrize("configured", ["pending job", "limit", "budget"])
def test_a_first_turn_is_not_written_when_a_job_waits_or_flow_control_is_configured(
    own_database: tuple[str, Engine], configured: str
) -> None:
    """Then the ranking decides (it may run another job first, or throttle this one)."""
    _, engine = own_database
    with Session(engine) as session, session.begin():
        if configured == "pending job":
            queued_first_turns(engine, 1)
        else:
            _configure(session, configured)
    job_id = uuid.uuid4()
    with _autocommit(engine) as conn:
        assert flow.first_turn_plain(conn, job_id, claim=LEASE, first=_first(job_id)) is None
        assert _written(conn, job_id) == ()
        assert conn.execute(text("SELECT count(*) FROM job_attempts")).scalar_one() == 0


def test_a_taken_id_fails_the_short_claim_and_writes_nothing(
    own_database: tuple[str, Engine],
) -> None:
    _, engine = own_database
    job_id = uuid.uuid4()
    with _autocommit(engine) as conn:
        assert flow.first_turn_plain(conn, job_id, claim=LEASE, first=_first(job_id))
        other = _first(job_id)
        with pytest.raises(IntegrityError) as raised:
            flow.first_turn_plain(conn, job_id, claim=LEASE, first=other)
        assert queries.id_taken(raised.value)
        conversations = conn.execute(text("SELECT count(*) FROM conversations")).scalar_one()
        assert conversations == 1, "the second conversation was written"


@pytest.mark.parametrize("backlog", [0, CROWD])
def test_the_short_claim_reads_the_pending_index_not_the_table(
    own_database: tuple[str, Engine], backlog: int
) -> None:
    """Statistics taken when nothing waited, on a table of finished jobs: whether any job is
    pending is read from the pending jobs' index (empty, or its first entry), under the plan
    Postgres keeps, not by reading the finished jobs."""
    _, engine = own_database
    _quiet_history(engine)
    queued_first_turns(engine, backlog)
    with engine.connect() as conn:
        _generic_plans(conn)
        before = rows_read(conn)
        outcomes = []
        for _ in range(3):
            job_id = uuid.uuid4()
            outcomes.append(flow.first_turn_plain(conn, job_id, claim=LEASE, first=_first(job_id)))
        read = rows_read(conn) - before
        assert [o is not None for o in outcomes] == [backlog == 0] * 3
        # A claim written reads its new job twice (its attempt's foreign key and model); one
        # declined, the first pending job. Read through the table: 5,000 and more.
        assert read <= 2 * 3, f"three short claims read {read} rows of jobs"
        conn.rollback()


def test_a_ranking_that_found_a_job_waiting_pauses_the_short_claim(
    own_database_settings: tuple[str, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claims that follow rank at once, for ``SHORT_CLAIM_PAUSE_S``, then try again."""
    _, engine = own_database_settings
    clock = [1000.0]
    monkeypatch.setattr(admission.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(admission, "_short_claims", admission._Pause())
    tried: list[uuid.UUID] = []
    short = flow.first_turn_plain

    def counted(conn: Any, job_id: uuid.UUID, **kwargs: Any) -> Any:
        tried.append(job_id)
        return short(conn, job_id, **kwargs)

    monkeypatch.setattr(flow, "first_turn_plain", counted)
    (waiting,) = queued_first_turns(engine, 1)
    settings = get_settings()

    def claim() -> flow.Ranking:
        job_id = uuid.uuid4()
        with _autocommit(engine) as conn:
            return admission.rank(conn, job_id, settings, claim=LEASE, first=_first(job_id))

    # The short claim declines; the ranking sees ``waiting`` and, as good as it, claims its own.
    first = claim()
    assert [j.id for j in first.candidates] == [waiting] and first.claim_row is not None
    assert len(tried) == 1
    second = claim()
    assert [j.id for j in second.candidates] == [waiting]
    assert len(tried) == 1, "the short claim was tried again within its pause"
    clock[0] += c.SHORT_CLAIM_PAUSE_S
    with engine.begin() as conn:
        conn.execute(text("UPDATE jobs SET status = 'cancelled' WHERE status = 'queued'"))
    third = claim()
    assert len(tried) == 2 and third.claim_row is not None and third.candidates == []


def _job_state(conn: Connection, job_id: uuid.UUID) -> tuple[Any, ...]:
    row = conn.execute(
        text("SELECT status, attempts FROM jobs WHERE id = :id"), {"id": job_id}
    ).one()
    return tuple(row)


def test_a_queued_job_with_nothing_else_waiting_is_claimed_without_ranking(
    own_database: tuple[str, Engine],
) -> None:
    _, engine = own_database
    (job_id,) = queued_first_turns(engine, 1)
    with _autocommit(engine) as conn:
        ranking = flow.claim_plain(conn, job_id, claim=LEASE)
        assert ranking is not None and ranking.claim_row is not None
        assert (ranking.own, ranking.candidates, ranking.rules_configured) == (None, [], False)
        claimed = attempts.claim_outcome(ranking.claim_row, job_id)
        assert isinstance(claimed, attempts.Claimed) and claimed.attempt == 1
        assert _job_state(conn, job_id) == ("running", 1)
        # Whatever the claim says is the answer: claimed again, it is busy.
        again = flow.claim_plain(conn, job_id, claim=LEASE)
        assert again is not None and again.claim_row is not None
        assert isinstance(attempts.claim_outcome(again.claim_row, job_id), attempts.Busy)


def test_the_short_claim_answers_what_the_claim_answers_for_a_retry_not_yet_due(
    own_database: tuple[str, Engine],
) -> None:
    """Nothing else waits: ``ezq_claim_job`` is called and its answer returned, as the
    ranking would (a retry not due yet is not its own candidate: nothing to rank)."""
    _, engine = own_database
    (job_id,) = queued_first_turns(engine, 1)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE jobs SET status = 'retrying', attempts = 1,"
                " dispatched_at = now() + interval '1 hour' WHERE id = :id"
            ),
            {"id": job_id},
        )
    with _autocommit(engine) as conn:
        ranking = flow.claim_plain(conn, job_id, claim=LEASE)
        assert ranking is not None and ranking.claim_row is not None
        outcome = attempts.claim_outcome(ranking.claim_row, job_id)
        assert isinstance(outcome, attempts.NotYetDue) and outcome.due_in_s > 3000
        assert _job_state(conn, job_id) == ("retrying", 1)


@pytest.mark.parametrize("configured", ["another job waits", "throttled", "limit", "budget"])
def test_a_queued_job_is_not_claimed_by_the_short_claim_when_there_is_something_to_decide(
    own_database: tuple[str, Engine], configured: str
) -> None:
    """Nothing is called (the job stays queued, no attempt opened): the ranking decides."""
    _, engine = own_database
    job_id, other = queued_first_turns(engine, 2)
    with Session(engine) as session, session.begin():
        if configured == "another job waits":
            pass
        elif configured == "throttled":
            session.execute(
                text("UPDATE jobs SET status = 'cancelled' WHERE id = :id"), {"id": other}
            )
            flow.throttle(session, job_id, reason="limit", until=None, recheck_s=3600)
        else:
            session.execute(
                text("UPDATE jobs SET status = 'cancelled' WHERE id = :id"), {"id": other}
            )
            _configure(session, configured)
    with _autocommit(engine) as conn:
        assert flow.claim_plain(conn, job_id, claim=LEASE) is None
        assert _job_state(conn, job_id) == ("queued", 0)
        assert conn.execute(text("SELECT count(*) FROM job_attempts")).scalar_one() == 0


def test_the_queued_short_claim_reads_its_job_and_one_pending_entry(
    own_database: tuple[str, Engine],
) -> None:
    """Under the plan Postgres keeps, with statistics taken when nothing waited: whether
    another job waits is read from the pending index (its first entries), not the table."""
    _, engine = own_database
    _quiet_history(engine)
    waiting = queued_first_turns(engine, CROWD)
    with engine.connect() as conn:
        _generic_plans(conn)
        before = rows_read(conn)
        for job_id in waiting[:3]:
            assert flow.claim_plain(conn, job_id, claim=LEASE) is None
        read = rows_read(conn) - before
        assert read <= 3 * 3, f"three short claims read {read} rows of jobs"
        conn.rollback()


def test_the_short_claims_read_the_pending_index_after_a_backlog_drained(
    own_database: tuple[str, Engine],
) -> None:
    """Statistics taken while jobs waited (a plan that expects to meet one soon), then the
    backlog gone: whether a job waits is still read from the pending jobs' index, not by
    reading the table until a pending job turns up (all of it, once none does)."""
    _, engine = own_database
    _quiet_history(engine)
    backlog = queued_first_turns(engine, CROWD)
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE jobs")
    queued_first_turns(engine, 1)  # one job still waits, after the backlog's end
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE jobs SET status = 'cancelled' WHERE id = ANY(:ids)"), {"ids": backlog}
        )
    with engine.connect() as conn:
        _generic_plans(conn)
        before = rows_read(conn)
        new = uuid.uuid4()
        assert flow.first_turn_plain(conn, new, claim=LEASE, first=_first(new)) is None
        assert flow.claim_plain(conn, uuid.uuid4(), claim=LEASE) is None
        read = rows_read(conn) - before
        assert read <= 4, f"two short claims read {read} rows of jobs"
        conn.rollback()

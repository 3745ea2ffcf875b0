"""A job's per-job statements read that job (its admission, its webhook delivery), not
every one in its state, whatever the table's statistics said when their plans were made.

The hot statements are prepared, and Postgres keeps a prepared statement's plan until the
table is next analyzed. Statistics taken at a quiet moment (no job running, none waiting)
made the planner read a job by id through the partial index of running (or pending) jobs,
filtering each entry by id: at 1,000 calls in flight, every record read the 1,000 running
jobs. And the claim's ranking counted every running job per tenant at each claim, even
with nothing else to rank. Each test takes the statistics at such a quiet moment, then
fills the state, and counts the rows of ``jobs`` its statement read
(``pg_stat_xact_user_tables``). Runs on a database of its own."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from service.db import attempts, flow, queries, recovery
from service.db.models import Job
from service.validation import validate_request
from service.webhooks import outbox
from service.webhooks.retry import AttemptResult, Delivered
from tests.seeding import queued_first_turns
from tests.table_reads import rows_read

HISTORY = 5000  # finished jobs: a table the planner reads by index, as in production
CROWD = 200  # jobs in the state a statement must not read through


def _quiet_history(engine: Engine) -> None:
    """``HISTORY`` finished jobs, each of its own conversation, and the table's statistics
    taken then: at a quiet moment, no job running or waiting."""
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO conversations (id) SELECT gen_random_uuid()"
            " FROM generate_series(1, %(n)s)",
            {"n": HISTORY},
        )
        conn.exec_driver_sql(
            "INSERT INTO jobs (id, conversation_id, status, model, params, input_messages,"
            " request_hash, attempts, started_at, finished_at)"
            " SELECT gen_random_uuid(), c.id, 'succeeded', 'glm-5.1', '{}', '[]', 'h', 1,"
            " now(), now() FROM conversations c"
        )
        conn.exec_driver_sql("ANALYZE jobs")


def _one_per_finished_job(engine: Engine, table: str, insert: str) -> None:
    """A row of ``table`` per finished job (``insert``), in its final state, and the
    table's statistics taken then."""
    with engine.begin() as conn:
        conn.exec_driver_sql(insert)
        conn.exec_driver_sql(f"ANALYZE {table}")


def _claim(engine: Engine, job_ids: list[uuid.UUID]) -> list[attempts.Claimed]:
    claimed = []
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        for job_id in job_ids:
            outcome = attempts.claim_job(conn, job_id, lease_seconds=600, holder="test")
            assert isinstance(outcome, attempts.Claimed)
            claimed.append(outcome)
    return claimed


def _running_after_quiet(own_database: tuple[str, Engine]) -> tuple[Engine, list[Any]]:
    """The quiet history, then ``CROWD`` jobs claimed (running, held by ``test``)."""
    _, engine = own_database
    _quiet_history(engine)
    return engine, _claim(engine, queued_first_turns(engine, CROWD))


def _jobs_read(conn: Connection) -> int:
    # Nothing here is vacuumed: an index-only read fetches its rows too.
    return rows_read(conn, "jobs")


def _generic_plans(conn: Connection) -> None:
    # The plan a prepared statement keeps from its sixth run, made at its first.
    conn.execute(text("SET plan_cache_mode = force_generic_plan"))
    conn.commit()


def test_a_record_reads_its_own_job_not_every_running_one(
    own_database: tuple[str, Engine],
) -> None:
    engine, claimed = _running_after_quiet(own_database)
    with engine.connect() as conn:
        _generic_plans(conn)
        before = _jobs_read(conn)
        for job in claimed[:3]:
            ended = attempts.record_success(
                conn,
                job,
                attempts.CallOutcome(http_status=200, request_id="r", surface="openai"),
                finish_reason="stop",
                reply={"role": "assistant", "content": "done"},
            )
            assert ended.job is not None and ended.job.status == "succeeded"
        failed = attempts.FailedCall(
            attempts.CallOutcome(http_status=500, request_id="r", surface="openai"),
            error_type="http_error",
            attempt_error="boom",
            job_error="boom",
            retryable=True,
        )
        with Session(bind=conn) as session:
            ended = attempts.record_failure(session, claimed[3], failed, final=False)
        assert ended.job is not None and ended.job.status == "retrying"
        read = _jobs_read(conn) - before
        assert read < CROWD, f"four records read {read} rows of jobs"
        conn.rollback()


def test_a_record_under_a_backlog_reads_its_conversation_not_the_backlog(
    own_database: tuple[str, Engine],
) -> None:
    """A record looks for the next queued turn of its conversation through the
    conversation's turns, not through the pending jobs; ``queries.next_waiting_job`` (the
    same lookup outside a record), ``queries.park`` and ``recovery.mark_unpublished``
    (jobs by id) likewise."""
    _, engine = own_database
    _quiet_history(engine)
    waiting = queued_first_turns(engine, CROWD)
    claimed = _claim(engine, waiting[:3])
    call = attempts.CallOutcome(http_status=200, request_id="r", surface="openai")
    with engine.connect() as conn:
        _generic_plans(conn)
        before = _jobs_read(conn)
        for job in claimed:
            reply = {"role": "assistant", "content": "done"}
            ended = attempts.record_success(conn, job, call, finish_reason="stop", reply=reply)
            assert ended.job is not None and ended.next_job_id is None
        read = _jobs_read(conn) - before
        assert read < CROWD, f"three records read {read} rows of jobs"
        # Statements sent through the ORM carry the state as a parameter, which a generic
        # plan cannot match to a partial index: their runs before psycopg prepares them
        # (and every run of an unprepared one) are planned for the value.
        conn.execute(text("SET plan_cache_mode = force_custom_plan"))
        before = _jobs_read(conn)
        with Session(bind=conn) as session:
            for job_id in waiting[3:6]:
                job = session.get(Job, job_id)
                assert job is not None
                assert queries.next_waiting_job(session, job.conversation_id) == job_id
                queries.park(session, job_id)
            recovery.mark_unpublished(session, waiting[6:9])
        read = _jobs_read(conn) - before
        assert read < CROWD, f"three lookups, parks and flags read {read} rows of jobs"
        conn.rollback()


def test_locking_a_waiting_job_reads_that_job_not_every_pending_one(
    own_database: tuple[str, Engine],
) -> None:
    """The claim of a job that waits (``flow.lock_own``; the ranking reads its own job
    with the same condition) finds it by id, and the lock of the candidates that may run
    in its place (``flow.lock_candidates``) finds them by id, whatever the statistics say
    of pending jobs."""
    _, engine = own_database
    _quiet_history(engine)
    waiting = queued_first_turns(engine, CROWD)
    with engine.connect() as conn:
        _generic_plans(conn)
        before = _jobs_read(conn)
        with Session(bind=conn) as session:
            for job_id in waiting[:3]:
                assert flow.lock_own(session, job_id)
            # The candidates that may run in a message's place, locked by their ids.
            assert flow.lock_candidates(session, waiting[4:8]) == set(waiting[4:8])
        read = _jobs_read(conn) - before
        assert read < CROWD, f"three locks and a lock of candidates read {read} rows of jobs"
        ranking = flow.ranking(conn, waiting[3], aging_s=60, limit=4, rank=False)
        assert ranking.own is not None and ranking.own.id == waiting[3]
        conn.rollback()


def test_ranking_a_backlog_reads_its_heads_not_the_backlog(
    own_database: tuple[str, Engine],
) -> None:
    """The ranking's reads of the backlog (each tenant's best jobs and oldest one, the
    candidates by id, whether a throttled job waits) go through the indexes made for them,
    not through the index of pending jobs by dispatch time, which a planner that believes
    few jobs are pending found cheapest (and then sorted the whole backlog)."""
    _, engine = own_database
    _quiet_history(engine)
    waiting = queued_first_turns(engine, CROWD)
    with engine.connect() as conn:
        _generic_plans(conn)
        before = _jobs_read(conn)
        for job_id in waiting[3:6]:
            ranking = flow.ranking(conn, job_id, aging_s=60, limit=4)
            assert ranking.own is not None and ranking.own.id == job_id
            # The four best by enqueue order, less the message's own job.
            assert [c.id for c in ranking.candidates] == [w for w in waiting[:4] if w != job_id]
            assert not ranking.throttled_waiting
        read = _jobs_read(conn) - before
        assert read < CROWD, f"three rankings read {read} rows of jobs"
        conn.rollback()


def test_waking_throttled_jobs_reads_the_best_not_every_throttled_one(
    own_database: tuple[str, Engine],
) -> None:
    """A call that ends under flow control wakes the best throttled jobs, read in priority
    order from their index, not read and sorted all through an index by dispatch time."""
    _, engine = own_database
    _quiet_history(engine)
    throttled = queued_first_turns(engine, CROWD)
    with Session(engine) as session, session.begin():
        for job_id in throttled:
            flow.throttle(session, job_id, reason="limit", until=None, recheck_s=3600)
    with engine.connect() as conn:
        _generic_plans(conn)
        before = _jobs_read(conn)
        with Session(bind=conn) as session:
            woken = [flow.wake_throttled(session, limit=2) for _ in range(3)]
        assert [set(w) for w in woken] == [set(throttled[i : i + 2]) for i in (0, 2, 4)]
        read = _jobs_read(conn) - before
        assert read < CROWD, f"three wakes read {read} rows of jobs"
        conn.rollback()


def test_a_claim_with_nothing_else_to_rank_counts_no_running_job(
    own_database: tuple[str, Engine],
) -> None:
    _, engine = own_database
    _quiet_history(engine)
    _claim(engine, queued_first_turns(engine, CROWD))
    request = validate_request(model="glm-5.1", messages=[{"role": "user", "content": "hi"}])
    with engine.connect() as conn:
        before = _jobs_read(conn)
        for _ in range(3):
            job_id = uuid.uuid4()
            ranking = flow.ranking(
                conn,
                job_id,
                aging_s=60,
                limit=4,
                claim=flow.Lease(600, "test"),
                first=queries.first_turn_values(request, job_id),
            )
            assert ranking.claim_row is not None and ranking.candidates == []
        read = _jobs_read(conn) - before
        assert read < CROWD, f"three claims read {read} rows of jobs"
        conn.rollback()


def test_a_claim_with_other_jobs_waiting_still_ranks_by_running_calls(
    own_database: tuple[str, Engine],
) -> None:
    """The count is still made when it orders jobs: a tenant with fewer calls running
    outranks one with more, at the same priority."""
    _, engine = own_database
    request_busy = validate_request(
        model="glm-5.1", messages=[{"role": "user", "content": "busy"}], tenant="busy"
    )
    request_idle = validate_request(
        model="glm-5.1", messages=[{"role": "user", "content": "idle"}], tenant="idle"
    )
    with Session(engine) as session, session.begin():
        running = [queries.create_job(session, request_busy)[0] for _ in range(3)]
        idle = queries.create_job(session, request_idle)[0]
        busy = queries.create_job(session, request_busy)[0]
    _claim(engine, running)
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        ranking = flow.ranking(conn, busy, aging_s=60, limit=4)
    assert ranking.own is not None and ranking.own.tenant_running == 3
    (other,) = ranking.candidates
    assert (other.id, other.tenant_running) == (idle, 0)
    assert other.outranks(ranking.own)


def test_settling_a_call_reads_its_admission_not_every_unsettled_one(
    own_database: tuple[str, Engine],
) -> None:
    """A call that ends under flow control settles its admission, found by its key,
    whatever the statistics say of unsettled admissions (the calls in flight)."""
    _, engine = own_database
    _quiet_history(engine)
    _one_per_finished_job(
        engine,
        "flow_admissions",
        "INSERT INTO flow_admissions (job_id, attempt, model, tokens_reserved, settled_at)"
        " SELECT id, 1, 'glm-5.1', 10, now() FROM jobs",
    )
    admitted = queued_first_turns(engine, CROWD)
    with Session(engine) as session, session.begin():
        for job_id in admitted:
            flow.admit(
                session,
                job_id=job_id,
                attempt=1,
                tenant=None,
                model="glm-5.1",
                tokens=10,
                cost_usd=None,
            )
    with engine.connect() as conn:
        _generic_plans(conn)
        before = rows_read(conn, "flow_admissions")
        with Session(bind=conn) as session:
            for job_id in admitted[:3]:
                flow.settle(session, job_id, 1, wake=0)
        read = rows_read(conn, "flow_admissions") - before
        assert read < CROWD, f"three settles read {read} rows of flow_admissions"
        settled = conn.execute(
            text("SELECT count(*) FROM flow_admissions WHERE settled_at IS NOT NULL")
        ).scalar_one()
        assert settled == HISTORY + 3
        conn.rollback()


def test_recording_a_webhook_attempt_reads_its_delivery_not_every_pending_one(
    own_database: tuple[str, Engine],
) -> None:
    """A webhook attempt's outcome is written to its delivery, found by id, whatever the
    statistics say of pending deliveries (a receiver that is down makes many)."""
    _, engine = own_database
    _quiet_history(engine)
    _one_per_finished_job(
        engine,
        "webhook_deliveries",
        "INSERT INTO webhook_deliveries"
        " (id, job_id, event_type, url, payload, status, next_attempt_at)"
        " SELECT gen_random_uuid(), id, 'job.succeeded', 'http://receiver.test/', '{}',"
        " 'delivered', now() FROM jobs",
    )
    jobs = queued_first_turns(engine, CROWD)
    with engine.begin() as conn:
        pending = [
            outbox.add_delivery(
                conn,
                job_id=job_id,
                event_type="job.succeeded",
                url="http://receiver.test/",
                payload="{}",
            )
            for job_id in jobs
        ]
    with engine.connect() as conn:
        _generic_plans(conn)
        before = rows_read(conn, "webhook_deliveries")
        for delivery_id in pending[:3]:
            assert delivery_id is not None
            claimed = outbox.claim(conn, delivery_id, lease_seconds=60)
            assert isinstance(claimed, outbox.Claimed)
            result = AttemptResult(status_code=200, error=None, duration_ms=5)
            assert outbox.finish(
                conn, claimed, result, Delivered(), retry_delay=None, published=False
            )
        read = rows_read(conn, "webhook_deliveries") - before
        assert read < CROWD, f"three attempts read {read} rows of webhook_deliveries"
        # A job's pending deliveries, through the ORM (see the record's test above).
        conn.execute(text("SET plan_cache_mode = force_custom_plan"))
        before = rows_read(conn, "webhook_deliveries")
        with Session(bind=conn) as session:
            for job_id, delivery_id in zip(jobs[3:6], pending[3:6], strict=True):
                assert outbox.pending_ids_for_job(session, job_id) == [delivery_id]
        read = rows_read(conn, "webhook_deliveries") - before
        assert read < CROWD, f"three jobs' pending deliveries read {read} rows"
        conn.rollback()


def test_a_heartbeat_renews_its_jobs_leases_reading_those_jobs(
    own_database: tuple[str, Engine],
) -> None:
    """A worker's heartbeat renews the leases of its own jobs, found by id, not through the
    running jobs of every worker."""
    engine, claimed = _running_after_quiet(own_database)
    with engine.connect() as conn:
        _generic_plans(conn)
        before = _jobs_read(conn)
        with Session(bind=conn) as session:
            for job in claimed[:3]:
                renewed = recovery.heartbeat(
                    session,
                    worker_id="test",
                    hostname="host",
                    pid=1,
                    queue="ezq",
                    lease_seconds=600,
                    job_ids=[job.job_id],
                )
                assert renewed == 1
        read = _jobs_read(conn) - before
        assert read < CROWD, f"three beats read {read} rows of jobs"
        conn.rollback()

"""The claim's ranking stays a few index probes however the jobs table grew since its plan
was made. The worker's hot statements are prepared, so Postgres keeps a plan made while the
table was small (a new database's first minute) until the next ANALYZE: the ranking's check
that no earlier turn of a job's conversation is unfinished then hashed every unfinished job,
a whole read of ``jobs`` three times per claim.

Runs on a database of its own, with nothing analyzed, as a new deployment's."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from service.db import flow
from tests.seeding import queued_first_turns
from tests.table_reads import rows_read, whole_table_reads


@pytest.mark.parametrize("rank", [True, False], ids=["ranking others", "own job only"])
def test_a_ranking_planned_on_a_small_table_reads_no_whole_table_once_it_grew(
    own_database: tuple[str, Engine], rank: bool
) -> None:
    _, engine = own_database
    (first,) = queued_first_turns(engine, 1)
    with engine.connect() as conn:
        # The plan is made at this first run, from a one-job table, and kept: as Postgres
        # keeps a prepared statement's plan from its sixth run until the next ANALYZE.
        conn.execute(text("SET plan_cache_mode = force_generic_plan"))
        assert flow.ranking(conn, first, aging_s=60, limit=4, rank=rank).own is not None
        conn.commit()

        grown = queued_first_turns(engine, 300)
        assert whole_table_reads(conn) == 0
        for job_id in (first, grown[150], grown[-1]):
            ranking = flow.ranking(conn, job_id, aging_s=60, limit=4, rank=rank)
            assert ranking.own is not None and ranking.own.id == job_id
            assert bool(ranking.candidates) == rank, "the heads of the backlog are ranked"
        assert whole_table_reads(conn) == 0
        conn.rollback()


def test_locking_candidates_planned_on_a_small_table_reads_no_whole_table_once_it_grew(
    own_database: tuple[str, Engine],
) -> None:
    """The lock of the candidates that may run in a message's place finds them by id (their
    state checked on the row): not through a whole read of a table that looked small, nor
    through every pending job."""
    _, engine = own_database
    first = queued_first_turns(engine, 2)
    with engine.connect() as conn:
        conn.execute(text("SET plan_cache_mode = force_generic_plan"))
        with Session(bind=conn) as session:
            assert flow.lock_candidates(session, first) == set(first)
        conn.commit()

        grown = queued_first_turns(engine, 300)
        assert whole_table_reads(conn) == 0
        before = rows_read(conn)
        with Session(bind=conn) as session:
            for some in (grown[:4], grown[150:154], grown[-4:]):
                assert flow.lock_candidates(session, some) == set(some)
        assert whole_table_reads(conn) == 0
        read = rows_read(conn) - before
        assert read < 100, f"three locks of four candidates read {read} rows of jobs"
        conn.rollback()

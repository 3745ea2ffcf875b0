"""A thread that holds a pooled connection and asks for another waits for the pool to free
one: with as many such threads as connections, until the pool's timeout (30 s). A worker's
own threads have connections of their own beside its job threads' share (the sweep holds
one for its advisory lock while its transactions take another: a pool sized for the job
threads alone, one connection at concurrency 1, stalled the sweep and every job of the
process with it at each of its turns), and creating a batch holds one at a time."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import Engine

from service import enqueue_completion
from service.batches.files import store_input_file
from service.batches.lifecycle import cancel_batch
from service.batches.submit import create_batch
from service.config import get_settings
from service.constants import BATCH_CHUNK_BYTES
from service.db.session import get_engine
from service.worker import sweep as sweep_module
from tests.conftest import reset_settings, wait_for_job
from tests.test_faults import wait_until

MODEL = "deepseek-v4-flash"
# Well under the pool's 30 s timeout, which a stalled sweep waits out before its next turn.
WITHIN_S = 15.0


def test_a_worker_of_concurrency_one_sweeps_and_runs_jobs_without_stalling(
    own_database_settings: tuple[str, Engine],
    own_queue: str,
    fake_gateway: Any,
    worker_factory: Callable[..., Any],
) -> None:
    url, engine = own_database_settings
    # The only worker on this database: every sweep turn (each second) is its own.
    worker = worker_factory(
        env={"DATABASE_URL": url, "EZQ_QUEUE": own_queue, "EZQ_SWEEP_INTERVAL": "1"},
        args=["--concurrency", "1"],
    )
    turns: set[datetime] = set()

    def three_sweep_turns() -> bool:
        with engine.connect() as conn:
            turns.update(
                conn.execute(
                    text(
                        "SELECT last_run_at FROM sweep_runs"
                        " WHERE name = 'sweep' AND last_worker IS NOT NULL"
                    )
                ).scalars()
            )
        return len(turns) >= 3

    wait_until(three_sweep_turns, "three sweep turns", timeout=WITHIN_S)
    jobs = [
        enqueue_completion(MODEL, [{"role": "user", "content": f"between sweeps {i}"}])
        for i in range(3)
    ]
    assert [wait_for_job(job, timeout=WITHIN_S)["status"] for job in jobs] == ["succeeded"] * 3
    assert "database unavailable" not in worker.log()


@pytest.mark.usefixtures("service_env")
def test_creating_a_batch_holds_one_pooled_connection_at_a_time() -> None:
    """The batch's transaction reads its input file through its own session: as many
    creations at once as the pool has connections each held one and waited for a second
    until the pool's timeout (the API answered 503 to all of them)."""
    engine = get_engine()
    held = threading.local()
    most = {"held": 0}

    def checkout(*_: Any) -> None:
        held.count = getattr(held, "count", 0) + 1
        most["held"] = max(most["held"], held.count)

    def checkin(*_: Any) -> None:
        held.count = getattr(held, "count", 0) - 1

    # Lines over three stored slices, so that the file is read slice by slice.
    lines = [
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": "x" * 10_000}]},
        }
        for i in range(5 * BATCH_CHUNK_BYTES // 2 // 10_000)
    ]
    body = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    uploaded = store_input_file(
        io.BytesIO(body), filename="pool.jsonl", purpose="batch", tenant=None, created_by=None
    )
    event.listen(engine, "checkout", checkout)
    event.listen(engine, "checkin", checkin)
    try:
        created = create_batch(
            input_file_id=uploaded["id"], endpoint="/v1/chat/completions", completion_window="24h"
        )
    finally:
        event.remove(engine, "checkout", checkout)
        event.remove(engine, "checkin", checkin)
    cancel_batch(created.view["id"])  # its lines are not published: none runs
    assert len(created.job_ids) == len(lines)
    assert most["held"] == 1


@pytest.mark.usefixtures("service_env")
def test_the_sweep_holds_its_lock_outside_a_transaction(
    own_database_settings: tuple[str, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep's lock connection is not idle in a transaction while the sweep runs: a
    server that ends such sessions (``idle_in_transaction_session_timeout``) would end it
    part way, and the sweep would fail at its unlock."""
    url, engine = own_database_settings
    with engine.begin() as conn:
        conn.execute(
            text(
                f'ALTER DATABASE "{url.rsplit("/", 1)[1]}"'
                " SET idle_in_transaction_session_timeout = '200ms'"
            )
        )

    def lock_idle_past_the_timeout() -> bool:
        """The session holding the sweep's lock has been idle for longer than the timeout,
        or the server has ended it."""
        with engine.connect() as conn:
            return bool(
                conn.execute(
                    text(
                        "SELECT NOT EXISTS (SELECT 1 FROM pg_locks l"
                        " JOIN pg_stat_activity a USING (pid)"
                        " WHERE l.locktype = 'advisory' AND l.granted"
                        " AND l.objid::bigint = :k AND l.database = (SELECT oid"
                        " FROM pg_database WHERE datname = current_database())"
                        " AND now() - a.state_change < interval '600 milliseconds')"
                    ),
                    {"k": sweep_module._LOCK_KEY},
                ).scalar()
            )

    def slow_finalize() -> int:  # a step that takes a while (a long batch's result files)
        wait_until(lock_idle_past_the_timeout, "the lock's session idle past the timeout")
        return 0

    monkeypatch.setattr(sweep_module, "finalize_ended", slow_finalize)
    report = sweep_module.sweep(get_settings(), worker="test", force=True)
    assert report is not None
    with engine.connect() as conn:  # the lock was released: it can be taken again
        key = {"k": sweep_module._LOCK_KEY}
        assert conn.execute(text("SELECT pg_try_advisory_lock(:k)"), key).scalar()
        conn.execute(text("SELECT pg_advisory_unlock(:k)"), key)


@pytest.mark.usefixtures("service_env")
def test_the_heartbeat_renews_leases_while_the_pool_is_taken(
    own_database_settings: tuple[str, Engine],
) -> None:
    """The heartbeat has a connection of its own: while job threads hold every pooled
    connection (claims waiting on a lock, say), it still renews its leases, where it once
    waited up to the pool's timeout (30 s, the default lease) for one."""
    from contextlib import ExitStack

    from service.db.session import pool_sizes
    from service.worker.liveness import ActiveJobs, Heartbeat, WorkerIdentity

    _, engine = own_database_settings
    heartbeat = Heartbeat(WorkerIdentity.new(), ActiveJobs(), get_settings())
    with ExitStack() as held:
        for _ in range(pool_sizes(get_settings())[1]):
            held.enter_context(get_engine().connect())
        beat = threading.Thread(target=heartbeat.beat, daemon=True)
        beat.start()
        beat.join(WITHIN_S)
        assert not beat.is_alive(), "the heartbeat waited for a pooled connection"
    assert heartbeat.beats == 1
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM workers")).scalar_one() == 1


@pytest.mark.usefixtures("service_env")
def test_the_http_interface_sizes_its_pool_for_its_threads_not_a_workers(
    own_database_settings: tuple[str, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's pool is sized for its job threads; the HTTP interface's for its own 40
    request threads, whatever ``EZQ_WORKER_CONCURRENCY`` an environment shared with small
    workers says (with 4 there, its 40 threads shared 6 connections and a burst of requests
    waited for one, up to the pool's 30 s)."""
    from service import constants as c
    from service.api.app import create_server_app
    from service.db import session as db_session

    monkeypatch.setattr(db_session, "_threads", None)  # and back to it afterwards
    monkeypatch.setenv("EZQ_WORKER_CONCURRENCY", "4")
    reset_settings()
    try:
        assert db_session.pool_sizes(get_settings()) == (4, 4 + c.DB_POOL_MAINTENANCE)
        create_server_app()  # what `ezq api` serves
        steady = c.DB_POOL_SIZE
        most = min(steady + c.DB_POOL_BURST, c.API_THREADS) + c.DB_POOL_MAINTENANCE
        assert db_session.pool_sizes(get_settings()) == (steady, most)
        db_session.dispose_engines()  # the next engine is built as the interface's is
        assert get_engine().pool.size() == most  # type: ignore[attr-defined]
    finally:
        monkeypatch.undo()
        reset_settings()

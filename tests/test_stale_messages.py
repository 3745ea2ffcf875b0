"""Stale messages: a message whose job had already ended when a worker took it (a cancelled
batch leaves one on the broker per line not started). Nobody waits for its result, so it is
dropped without reading the job or failing its task, and it runs the best-ranked waiting
job in its place: an interactive job enqueued after the cancel starts while the cancelled
lines' messages are still queued, not once the worker has drained them. A message whose
producer waits for its result (a foreign ``send_task``) still reports its job, cancelled.

The first tests run the worker's ``run_job`` in this process on a database of their own
(what waits is database-wide); the others a real worker, the fake gateway and Redis.
"""

from __future__ import annotations

import io
import json
import re
import secrets
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from sqlalchemy import event, text
from sqlalchemy.engine import Engine

from service import cancel_job, enqueue_completion
from service import constants as c
from service.config import get_settings
from service.db import driver, queries
from service.db.session import get_engine, transaction
from service.fake_gateway import Fault
from service.gateway import GatewayClient
from service.live.events import stream_key
from service.validation import validate_request
from service.worker.runner import Dropped, Finished, Outcome, Parked, run_job
from tests.conftest import REDIS_URL, WorkerProcess, reset_settings, sql, wait_for_job
from tests.test_faults import wait_until

MODEL = "glm-5.1"


# --- in this process, on a database of the test's own --------------------------------------


@pytest.fixture
def database(
    own_database_settings: tuple[str, Engine], service_env: dict[str, str]
) -> tuple[str, Engine]:
    reset_settings()
    return own_database_settings


@pytest.fixture
def statements(
    database: tuple[str, Engine], monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[str]]:
    """The SQL the worker sends, through SQLAlchemy or on the driver's connection."""
    seen: list[str] = []
    run_on_driver = driver.rows

    def on_driver(executor: Any, statement: driver.DriverStatement, params: Any) -> Any:
        seen.append(statement.sql)
        return run_on_driver(executor, statement, params)

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    monkeypatch.setattr(driver, "rows", on_driver)
    engine = get_engine(database[0])
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


@pytest.fixture
def gateway(fake_gateway: Any) -> Iterator[GatewayClient]:
    client = GatewayClient(get_settings())
    try:
        yield client
    finally:
        client.close()


def _job(prompt: str, **fields: Any) -> uuid.UUID:
    request = validate_request(
        model=MODEL, messages=[{"role": "user", "content": prompt}], **fields
    )
    with transaction() as session:
        job_id, _ = queries.create_job(session, request)
    return job_id


def _cancelled(prompt: str) -> uuid.UUID:
    job_id = _job(prompt, priority=1)
    cancel_job(job_id)
    return job_id


def _run(job_id: uuid.UUID, gateway: Any, *, own_only: bool = False) -> Outcome:
    return run_job(
        job_id,
        gateway=gateway,
        settings=get_settings(),
        publish=lambda _: None,
        publish_webhooks=lambda _: None,
        holder="stale-messages-test",
        own_only=own_only,
    )


def _status(engine: Engine, job_id: uuid.UUID) -> tuple[Any, ...]:
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT status, attempts, throttle_reason FROM jobs WHERE id = :id"),
            {"id": job_id},
        ).one()
    return tuple(row)


def _reads_a_view(statements: list[str]) -> bool:
    # The job's view reads its messages and usage (``views.job_view``); a claim never does.
    return any("FROM token_usage" in s and "ezq_claim_job" not in s for s in statements)


def test_a_stale_message_with_nothing_waiting_is_dropped_in_one_statement(
    database: tuple[str, Engine], statements: list[str], gateway: GatewayClient
) -> None:
    stale = _cancelled("a cancelled line")
    statements.clear()

    outcome = _run(stale, gateway)

    assert isinstance(outcome, Dropped), outcome
    assert outcome.reason == "job already cancelled"
    # The short claim said the job had ended; its view was not read.
    assert len(statements) == 1 and "ezq_claim_job" in statements[0], statements


def test_a_stale_message_runs_the_best_waiting_job_in_its_place(
    database: tuple[str, Engine], statements: list[str], gateway: GatewayClient
) -> None:
    _, engine = database
    stale = _cancelled("a cancelled line")
    low = _job("a waiting batch line", priority=1)
    interactive = _job("an interactive job", priority=5)
    statements.clear()

    outcome = _run(stale, gateway)

    assert isinstance(outcome, Parked), outcome
    assert outcome.reason == f"ran job {interactive} in its place"
    assert _status(engine, interactive) == ("succeeded", 1, None)
    assert _status(engine, low) == ("queued", 0, None)  # untouched: its message runs it
    assert _status(engine, stale)[0] == "cancelled"
    assert not _reads_a_view(statements)
    # The job's own message, when it comes, finds it ended: dropped, and it runs the next.
    assert isinstance(_run(interactive, gateway), Parked)
    assert _status(engine, low) == ("succeeded", 1, None)
    assert isinstance(_run(low, gateway), Dropped)


def test_a_stale_message_runs_nothing_a_limit_holds_back(
    database: tuple[str, Engine], gateway: GatewayClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job in its place passes the same checks as one that outranks a message's own:
    a job its limit holds back is not run, and the message is dropped."""
    _, engine = database
    monkeypatch.setenv("EZQ_FLOW_WINDOW", "600")  # the one call stays in the window
    reset_settings()
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO flow_limits (id, tenant, model, max_concurrent, requests_per_window)"
                " VALUES (gen_random_uuid(), 'acme', '*', 5, 1)"
            )
        )
    first = _job("the window's one call", tenant="acme")
    assert isinstance(_run(first, gateway), Finished)
    held = _job("held by the rate limit", tenant="acme")
    free = _job("another tenant's job", tenant="other", priority=1)
    stale = _cancelled("a cancelled line")

    outcome = _run(stale, gateway)

    # The best-ranked job (priority 5) is held by its limit: the next one runs instead.
    assert isinstance(outcome, Parked) and outcome.reason == f"ran job {free} in its place"
    assert _status(engine, free)[:2] == ("succeeded", 1)
    assert _status(engine, held)[:2] == ("queued", 0)
    again = _cancelled("another cancelled line")
    assert isinstance(_run(again, gateway), Dropped)
    assert _status(engine, held)[:2] == ("queued", 0)


def test_a_stale_message_whose_producer_waits_still_reports_its_job(
    database: tuple[str, Engine], gateway: GatewayClient
) -> None:
    _, engine = database
    stale = _cancelled("a cancelled job a producer waits on")
    waiting = _job("an interactive job", priority=5)

    outcome = _run(stale, gateway, own_only=True)

    assert isinstance(outcome, Finished) and outcome.result["status"] == "cancelled"
    assert _status(engine, waiting)[:2] == ("queued", 0)  # its own message runs it


# --- a real worker ---------------------------------------------------------------------------

LINES = 400


def _submit_batch(marker: str, lines: int) -> tuple[str, list[uuid.UUID]]:
    from service.batches.files import store_input_file
    from service.batches.submit import create_batch, publish_lines

    body = b"".join(
        json.dumps(
            {
                "custom_id": f"line-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": f"{marker} {i}"}],
                },
            }
        ).encode()
        + b"\n"
        for i in range(lines)
    )
    uploaded = store_input_file(
        io.BytesIO(body), filename="stale.jsonl", purpose="batch", tenant=None, created_by=None
    )
    created = create_batch(
        input_file_id=uploaded["id"],
        endpoint=c.BATCH_ENDPOINT,
        completion_window=c.BATCH_COMPLETION_WINDOW,
    )
    publish_lines(created.job_ids)
    return str(created.view["id"]), created.job_ids


def _started(job_ids: list[uuid.UUID]) -> int:
    rows = sql(
        "SELECT count(*) FROM jobs WHERE id = ANY(:ids) AND started_at IS NOT NULL",
        ids=[str(j) for j in job_ids],
    )
    return int(rows[0][0])


def _cancel_a_slow_batch_then_enqueue(
    worker_factory: Callable[..., WorkerProcess],
    fake_gateway: Any,
    queue: str,
    *,
    log_level: str = "DEBUG",
) -> tuple[WorkerProcess, list[uuid.UUID], uuid.UUID, int]:
    """Run a batch of slow lines on a worker of four threads, cancel it while its first
    lines run, enqueue an interactive job, and return the worker, the lines never started,
    the interactive job and how many messages the queue held when that job started."""
    from service.batches.lifecycle import cancel_batch

    marker = f"stale-{secrets.token_hex(4)}"
    fake_gateway.add_faults(Fault(kind="normal", match=marker, latency=1.0, times=LINES))
    worker = worker_factory(
        env={"EZQ_QUEUE": queue, "EZQ_WORKER_CONCURRENCY": "4", "EZQ_LOG_LEVEL": log_level}
    )
    batch_id, lines = _submit_batch(marker, LINES)
    wait_until(lambda: _started(lines) >= 1, "a batch line running")
    assert cancel_batch(batch_id)["status"] == "cancelling"
    interactive = enqueue_completion(MODEL, [{"role": "user", "content": f"urgent {marker[6:]}"}])
    broker = redis.Redis.from_url(REDIS_URL)
    depth: list[int] = []

    def started() -> bool:
        rows = sql("SELECT started_at IS NOT NULL FROM jobs WHERE id = :id", id=interactive)
        if rows != [(True,)]:
            return False
        depth.append(int(broker.llen(queue)))
        return True

    wait_until(started, "the interactive job started", timeout=60)
    assert wait_for_job(interactive, timeout=30)["status"] == "succeeded"
    never_started = [
        uuid.UUID(str(row[0]))
        for row in sql("SELECT id FROM jobs WHERE batch_id = :b AND started_at IS NULL", b=batch_id)
    ]
    assert len(never_started) >= LINES - 8
    return worker, never_started, interactive, depth[0]


def test_an_interactive_job_starts_while_a_cancelled_batch_s_messages_wait(
    worker_factory: Callable[..., WorkerProcess], fake_gateway: Any, own_queue: str
) -> None:
    """The job enqueued behind a cancelled batch's messages is run by the first of them a
    thread takes: when it starts, most of them are still in the broker (before, it started
    only once the worker had drained them all, one view read and failed task each)."""
    _, _, interactive, depth = _cancel_a_slow_batch_then_enqueue(
        worker_factory, fake_gateway, own_queue
    )
    assert depth >= LINES // 2, depth
    # Run in a stale message's place, its end still reaches live listeners at once.
    live = redis.Redis.from_url(REDIS_URL)

    def final_entry() -> bool:
        entries = live.xrange(stream_key(interactive))
        return bool(entries) and entries[-1][1][b"t"] == b"job.succeeded"

    wait_until(final_entry, "the job's final live event", timeout=10)


def test_stale_messages_fail_no_task_and_log_nothing_at_info(
    worker_factory: Callable[..., WorkerProcess], fake_gateway: Any, own_queue: str
) -> None:
    """No "raised expected: JobFailed('job … cancelled')" line, nor any other line above
    DEBUG, for the messages of the lines the cancel stopped."""
    worker, never_started, _, _ = _cancel_a_slow_batch_then_enqueue(
        worker_factory, fake_gateway, own_queue, log_level="INFO"
    )
    broker = redis.Redis.from_url(REDIS_URL)
    wait_until(lambda: broker.llen(own_queue) == 0, "the stale messages taken", timeout=60)
    worker.stop()  # a warm shutdown: the messages it holds end, its log is written out
    log = worker.log()
    # Its jobs' task lines only: the worker also delivers other tests' webhooks (one pool).
    failed_tasks = [
        x for x in log.splitlines() if "raised expected" in x and c.TASK_CHAT_COMPLETION in x
    ]
    assert failed_tasks == [], failed_tasks[:5]
    stale = re.compile("|".join(str(j) for j in never_started))
    loud = [x for x in log.splitlines() if stale.search(x)]
    assert loud == [], loud[:5]


# --- a producer waiting for the result ---------------------------------------------------------


@pytest.mark.usefixtures("worker")
def test_a_message_waited_on_for_a_job_cancelled_before_it_fails_saying_cancelled(
    foreign_app: Celery, service_env: dict[str, str], own_queue: str
) -> None:
    """A job cancelled before any worker took it (enqueued on a queue nobody consumes),
    then sent by id by a producer that waits: the task fails saying so."""
    job_id = enqueue_completion(MODEL, [{"role": "user", "content": "cancelled early"}])
    cancel_job(job_id)
    result = foreign_app.send_task(
        "ezq.chat_completion", args=[str(job_id)], queue=service_env["EZQ_QUEUE"]
    )
    with pytest.raises(Exception) as failed:
        result.get(timeout=30)
    assert str(failed.value) == f"job {job_id} cancelled"

"""What a job costs the database, statement by statement. A job with nothing to decide at
claim and nothing to announce at its end (no flow-control limit or budget, no webhook) is
two statements, each on an autocommit connection: the ranking, which claims the job, and
the record of its reply, history, attempt and priced usage. A webhook or a limit puts the
record (or the claim) back in a transaction of its own, with the rows that need it.

Runs the worker's ``run_job`` in this process against the fake gateway, on a database of
its own (whether a limit exists is database-wide, and no session worker may run its jobs).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from service.completion import Completion
from service.config import get_settings
from service.db import driver, queries
from service.db import flow as flow_db
from service.db.models import Job
from service.db.session import autocommit, get_engine, transaction
from service.gateway import GatewayClient
from service.usage.prices import PriceInput, add_price
from service.validation import validate_request
from service.worker.runner import Finished, Outcome, Parked, run_job
from tests.conftest import reset_settings

MODEL = "glm-5.1"

# How a statement of the job's path is recognised in the SQL sent.
_KINDS = (
    ("FROM decision d WHERE d.plain", "first turn's short claim"),
    ("AND j.id <> ", "short claim"),
    ("CASE WHEN d.plain THEN 'running'", "first turn written by its ranking"),
    ("INSERT INTO conversations", "first turn"),
    ("WITH RECURSIVE tenants", "ranking"),
    ("ezq_claim_job", "claim"),
    ("SET status = 'succeeded'", "success"),
    ("INSERT INTO webhook_deliveries", "webhook"),
    ("INSERT INTO flow_admissions", "admission"),
    ("UPDATE flow_admissions", "settle"),
    ("FOR UPDATE OF j", "lock"),
    ("status = 'cancelled' AND attempts", "cancelled attempt"),
    ("INSERT INTO token_usage", "usage"),
)


def _kind(statement: str) -> str:
    return next((kind for marker, kind in _KINDS if marker in statement), statement[:60])


@pytest.fixture
def database(
    own_database_settings: tuple[str, Engine],
    service_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[str, Engine]:
    """This process's settings (the test services') and engines on a database of the
    test's own."""
    monkeypatch.setenv("WEBHOOK_SECRET", "whsec_" + "c2VjcmV0LWZvci10aGUtcm91bmQtdHJpcC10ZXN0cw==")
    reset_settings()
    return own_database_settings


@pytest.fixture
def statements(
    database: tuple[str, Engine], monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[tuple[str, bool]]]:
    """Each statement the worker sends, through SQLAlchemy or on the driver's connection
    (``service.db.driver``): its kind, and whether it ran on an autocommit connection
    (False: inside a transaction)."""
    seen: list[tuple[str, bool]] = []

    def record(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append((_kind(statement), bool(conn.connection.dbapi_connection.autocommit)))

    run_on_driver = driver.rows

    def on_driver(executor: Any, statement: driver.DriverStatement, params: Any) -> Any:
        seen.append((_kind(statement.sql), driver.driver_connection(executor).autocommit))
        return run_on_driver(executor, statement, params)

    monkeypatch.setattr(driver, "rows", on_driver)
    engine = get_engine(database[0])
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _job(prompt: str, **fields: Any) -> uuid.UUID:
    request = validate_request(
        model=MODEL, messages=[{"role": "user", "content": prompt}], **fields
    )
    with transaction() as session:
        job_id, _ = queries.create_job(session, request)
    return job_id


def _run(job_id: uuid.UUID, gateway: Any) -> Finished:
    outcome = _run_outcome(job_id, gateway)
    assert isinstance(outcome, Finished), outcome
    return outcome


def _run_outcome(job_id: uuid.UUID, gateway: Any, create: Any = None) -> Outcome:
    published: list[uuid.UUID] = []
    return run_job(
        job_id,
        gateway=gateway,
        settings=get_settings(),
        publish=published.append,
        publish_webhooks=lambda ids: None,
        holder="round-trips-test",
        create=create,
    )


def _limit_acme(engine: Engine) -> None:
    """A concurrency limit on tenant acme: a claim of its jobs has something to decide."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO flow_limits (id, tenant, model, max_concurrent)"
                " VALUES (gen_random_uuid(), 'acme', '*', 5)"
            )
        )


def _rows(engine: Engine, query: str, **params: Any) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(query), params).all()]


@pytest.fixture
def gateway(fake_gateway: Any) -> Iterator[GatewayClient]:
    client = GatewayClient(get_settings())
    try:
        yield client
    finally:
        client.close()


def test_a_plain_job_is_two_statements_and_no_transaction(
    database: tuple[str, Engine], statements: list[tuple[str, bool]], gateway: GatewayClient
) -> None:
    _, engine = database
    with transaction() as session:
        price = add_price(session, PriceInput(MODEL, Decimal(3), Decimal("0.3"), Decimal(15)))
        assert price is not None
        price_id = price.id
    job_id = _job("a plain job")
    statements.clear()

    finished = _run(job_id, gateway)

    assert finished.result["status"] == "succeeded"
    # Nothing else waits and nothing is configured: the short claim, nothing ranked.
    assert statements == [("short claim", True), ("success", True)]
    # That one statement wrote all of it: the reply in the history, the attempt, and the
    # priced usage row.
    assert _rows(
        engine, "SELECT role FROM messages WHERE job_id = :id ORDER BY seq", id=job_id
    ) == [
        ("user",),
        ("assistant",),
    ]
    assert _rows(
        engine,
        "SELECT finished_at IS NOT NULL, http_status FROM job_attempts WHERE job_id = :id",
        id=job_id,
    ) == [(True, 200)]
    ((total, cancelled, uncached, cached, completion, cost, priced_by),) = _rows(
        engine,
        "SELECT total_tokens, job_cancelled, uncached_prompt_tokens, cached_tokens,"
        " completion_tokens, cost_usd, price_id FROM token_usage WHERE job_id = :id",
        id=job_id,
    )
    assert total == finished.result["usage"]["total_tokens"] > 0
    assert cancelled is False
    # Priced in the same statement, at the price in effect, to the last digit.
    assert priced_by == price_id
    expected = (uncached * 3 + cached * Decimal("0.3") + completion * 15) / Decimal(1_000_000)
    assert cost == expected > 0


def test_a_job_with_a_webhook_is_recorded_with_its_outbox_row_in_one_transaction(
    database: tuple[str, Engine], statements: list[tuple[str, bool]], gateway: GatewayClient
) -> None:
    _, engine = database
    job_id = _job("a job with a webhook", callback_url="https://hooks.example.com/ezq")
    statements.clear()

    _run(job_id, gateway)

    # The claim has nothing to decide; the record and its outbox row commit together.
    assert statements == [("short claim", True), ("success", False), ("webhook", False)]
    assert _rows(
        engine, "SELECT event_type FROM webhook_deliveries WHERE job_id = :id", id=job_id
    ) == [("job.succeeded",)]


def test_a_limit_puts_the_claim_and_the_record_in_transactions(
    database: tuple[str, Engine], statements: list[tuple[str, bool]], gateway: GatewayClient
) -> None:
    _, engine = database
    _limit_acme(engine)
    job_id = _job("a job under a limit", tenant="acme")
    statements.clear()

    finished = _run(job_id, gateway)

    assert finished.result["status"] == "succeeded"
    kinds = {kind: autocommit for kind, autocommit in statements}
    # Not claimed by the short claim (a limit exists); read without a transaction (and not
    # claimed there), then decided in one: the job locked, its limit checked, claimed, its
    # reservation written; the record settles it in its own transaction.
    assert kinds["short claim"] is True
    assert kinds["ranking"] is True
    assert kinds["lock"] is False
    assert kinds["claim"] is False
    assert kinds["admission"] is False
    assert kinds["success"] is False
    assert kinds["settle"] is False
    assert _rows(
        engine, "SELECT settled_at IS NOT NULL FROM flow_admissions WHERE job_id = :id", id=job_id
    ) == [(True,)]


def test_a_better_job_runs_in_the_message_s_place_and_the_ranking_claims_nothing(
    database: tuple[str, Engine], statements: list[tuple[str, bool]], gateway: GatewayClient
) -> None:
    own = _job("an ordinary job", priority=5)
    better = _job("a more urgent job", priority=9)
    statements.clear()

    finished = _run_outcome(own, gateway)

    # The ranking found a job that outranks the message's own: it claimed nothing, and the
    # transaction after it ran the better job in the message's place.
    assert isinstance(finished, Parked), finished
    assert [kind for kind, _ in statements][:4] == ["short claim", "ranking", "lock", "lock"]
    assert ("claim", False) in statements
    with transaction() as session:
        ran = session.get(Job, better)
        assert ran is not None and ran.status == "succeeded"
        waiting = session.get(Job, own)
        assert waiting is not None and waiting.status == "queued" and waiting.attempts == 0
        assert waiting.throttle_reason == f"outranked by job {better}"


class CancellingGateway:
    """Cancels the job while its call is in flight, then answers."""

    def __init__(self, client: GatewayClient, job_id: uuid.UUID) -> None:
        self.client = client
        self.job_id = job_id

    def complete(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any], surface: str
    ) -> Completion:
        with transaction() as session:
            queries.cancel_job(session, self.job_id)
        return self.client.complete(model, messages, params, surface)


def test_a_reply_that_arrives_after_a_cancel_keeps_its_usage_on_the_cancelled_job(
    database: tuple[str, Engine], statements: list[tuple[str, bool]], gateway: GatewayClient
) -> None:
    _, engine = database
    job_id = _job("cancelled while its call runs")
    statements.clear()

    finished = _run(job_id, CancellingGateway(gateway, job_id))

    assert finished.result["status"] == "cancelled"
    # The autocommit record found the job no longer its own and wrote nothing of it; the
    # transaction after it kept the call's outcome and its usage, not the reply.
    recorded = [
        (kind, autocommit)
        for kind, autocommit in statements
        if kind not in ("short claim", "ranking")
    ]
    first = recorded.index(("success", True))
    assert recorded[first + 1 :][:2] == [("cancelled attempt", False), ("usage", False)]
    assert [kind for kind, _ in recorded].count("success") == 1
    assert _rows(engine, "SELECT role FROM messages WHERE job_id = :id", id=job_id) == []
    assert _rows(engine, "SELECT error_type FROM job_attempts WHERE job_id = :id", id=job_id) == [
        ("cancelled",)
    ]
    assert _rows(engine, "SELECT job_cancelled FROM token_usage WHERE job_id = :id", id=job_id) == [
        (True,)
    ]


def test_a_foreign_first_turn_is_written_claimed_by_one_statement(
    database: tuple[str, Engine], statements: list[tuple[str, bool]], gateway: GatewayClient
) -> None:
    _, engine = database
    request = validate_request(
        model=MODEL,
        messages=[{"role": "user", "content": "a foreign first turn"}],
        tenant="acme",
    )
    job_id = uuid.uuid4()

    outcome = _run_outcome(job_id, gateway, create=request)

    assert isinstance(outcome, Finished) and outcome.result["status"] == "succeeded"
    # Nothing waits and nothing is configured: the short claim writes it, nothing is ranked.
    assert statements == [("first turn's short claim", True), ("success", True)]
    # Written claimed: started when it was created, its first attempt open from then on
    # (and closed by the record), in its own new conversation.
    assert _rows(
        engine,
        "SELECT created_at = started_at, attempts, tenant FROM jobs WHERE id = :id",
        id=job_id,
    ) == [(True, 1, "acme")]
    assert _rows(
        engine,
        "SELECT a.attempt, a.started_at = j.started_at, a.finished_at IS NOT NULL, a.model"
        " FROM job_attempts a JOIN jobs j ON j.id = a.job_id WHERE a.job_id = :id",
        id=job_id,
    ) == [(1, True, True, MODEL)]
    assert _rows(engine, "SELECT tenant FROM conversations") == [("acme",)]


def _running(tenant: str) -> uuid.UUID:
    """A job of ``tenant`` whose call is under way."""
    job_id = _job(f"a call of {tenant} under way", tenant=tenant)
    with autocommit() as conn:
        flow_db.ranking(conn, job_id, aging_s=60.0, limit=4, claim=flow_db.Lease(60.0, "other"))
    return job_id


@pytest.mark.parametrize(
    ("waiting", "foreign"),
    [
        (dict(priority=9), dict(priority=5)),
        # Equal priorities: the tenant with fewer calls running goes first (fair shares).
        (dict(priority=5, tenant="quiet"), dict(priority=5, tenant="busy")),
    ],
    ids=["a higher priority waits", "a tenant with fewer calls running waits"],
)
def test_an_outranked_foreign_first_turn_is_written_queued_and_the_better_job_runs_instead(
    database: tuple[str, Engine],
    statements: list[tuple[str, bool]],
    gateway: GatewayClient,
    waiting: dict[str, Any],
    foreign: dict[str, Any],
) -> None:
    _, engine = database
    if "tenant" in foreign:
        _running(foreign["tenant"])
    better = _job("a job that outranks the foreign one", **waiting)
    statements.clear()
    request = validate_request(
        model=MODEL, messages=[{"role": "user", "content": "a foreign first turn"}], **foreign
    )
    job_id = uuid.uuid4()

    outcome = _run_outcome(job_id, gateway, create=request)

    # Not written by the short claim (a job waits); written by its ranking but not claimed:
    # queued, then admitted like any waiting job, which runs the better job in its place.
    assert isinstance(outcome, Parked), outcome
    assert [kind for kind, _ in statements][:4] == [
        "first turn's short claim",
        "first turn written by its ranking",
        "lock",
        "lock",
    ]
    assert _rows(engine, "SELECT status FROM jobs WHERE id = :id", id=better) == [("succeeded",)]
    assert _rows(
        engine,
        "SELECT status, attempts, started_at, lease_holder, throttle_reason FROM jobs"
        " WHERE id = :id",
        id=job_id,
    ) == [("queued", 0, None, None, f"outranked by job {better}")]
    assert _rows(engine, "SELECT count(*) FROM job_attempts WHERE job_id = :id", id=job_id) == [
        (0,)
    ]


def test_a_foreign_first_turn_under_a_limit_is_written_queued_then_admitted_and_claimed(
    database: tuple[str, Engine], statements: list[tuple[str, bool]], gateway: GatewayClient
) -> None:
    _, engine = database
    _limit_acme(engine)
    request = validate_request(
        model=MODEL, messages=[{"role": "user", "content": "under a limit"}], tenant="acme"
    )
    job_id = uuid.uuid4()

    outcome = _run_outcome(job_id, gateway, create=request)

    assert isinstance(outcome, Finished) and outcome.result["status"] == "succeeded"
    kinds = {kind: autocommit for kind, autocommit in statements}
    # Not by the short claim; written queued (a limit exists: there is something to
    # decide), then locked, checked against its limit, claimed and its reservation
    # written in one transaction.
    assert kinds["first turn's short claim"] is True
    assert kinds["first turn written by its ranking"] is True
    assert kinds["lock"] is False
    assert kinds["claim"] is False
    assert kinds["admission"] is False
    assert _rows(engine, "SELECT attempts FROM jobs WHERE id = :id", id=job_id) == [(1,)]
    assert _rows(engine, "SELECT attempt FROM job_attempts WHERE job_id = :id", id=job_id) == [(1,)]


def test_a_foreign_first_turn_whose_id_is_taken_writes_and_claims_nothing(
    database: tuple[str, Engine], statements: list[tuple[str, bool]], gateway: GatewayClient
) -> None:
    _, engine = database
    taken = _job("the job that has this id")
    request = validate_request(
        model=MODEL, messages=[{"role": "user", "content": "another request, the same id"}]
    )

    with pytest.raises(IntegrityError) as raised:
        _run_outcome(taken, gateway, create=request)

    assert queries.id_taken(raised.value)
    # The job already there is neither claimed nor changed, and no conversation was added.
    assert _rows(
        engine, "SELECT status, attempts, input_messages FROM jobs WHERE id = :id", id=taken
    ) == [("queued", 0, [{"role": "user", "content": "the job that has this id"}])]
    assert _rows(engine, "SELECT count(*) FROM job_attempts") == [(0,)]
    assert _rows(engine, "SELECT count(*) FROM conversations") == [(1,)]


@pytest.mark.parametrize(
    "own_only", [True, False], ids=["sender waits for the result", "sender does not wait"]
)
def test_the_claims_ranking_runs_on_a_plan_postgres_keeps(
    database: tuple[str, Engine], own_only: bool
) -> None:
    """Postgres plans a prepared statement for its values at its first five runs, then keeps
    one plan for any values if it costs no more. The ranking's shape must not depend on its
    values: planned anew at every claim, it cost about 2 ms of a claim's 3 when the message's
    sender waits for its result (``own_only``). The first turn's short claim keeps its plan
    too."""
    runs = 8
    with autocommit() as conn:
        for i in range(runs):
            request = validate_request(
                model=MODEL, messages=[{"role": "user", "content": f"first turn {i}"}]
            )
            lease = flow_db.Lease(60.0, "plans-test")
            job_id = uuid.uuid4()
            ranking = flow_db.ranking(
                conn,
                job_id,
                aging_s=60.0,
                limit=4,
                rank=not own_only,
                claim=lease,
                first=queries.first_turn_values(request, job_id),
            )
            assert ranking.claim_row is not None and ranking.claim_row.attempt == 1
            job_id = uuid.uuid4()
            short = flow_db.first_turn_plain(
                conn, job_id, claim=lease, first=queries.first_turn_values(request, job_id)
            )
            assert short is not None and short.claim_row is not None
        planned = (
            driver.driver_connection(conn)
            .execute(
                "SELECT statement LIKE '%WITH RECURSIVE tenants%', generic_plans, custom_plans"
                " FROM pg_prepared_statements WHERE statement LIKE '%INSERT INTO jobs%'"
                " ORDER BY 1"
            )
            .fetchall()
        )
    assert [tuple(row) for row in planned] == [(False, runs - 5, 5), (True, runs - 5, 5)]

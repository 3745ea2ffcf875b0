"""Every CLI table shows callers' text as written: square brackets in a tenant, a model, a
receiver's answer or a dead letter's reason are not rich markup (``[/x]`` raised
MarkupError, ``[args, kwargs, options]`` vanished) and ``:smile:`` is not an emoji."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from tests.conftest import run_ezq, sql

pytestmark = pytest.mark.usefixtures("service_env")

# Wide enough that no cell is cut, so that a whole value can be looked for.
WIDE = {"COLUMNS": "200"}


def shown(*args: str) -> str:
    """The table ``ezq ARGS`` prints; it must succeed without a traceback."""
    done = run_ezq(*args, env=WIDE)
    assert done.returncode == 0 and "Traceback" not in done.stderr, (done.stdout, done.stderr)
    return done.stdout


@pytest.fixture
def tenant() -> Iterator[str]:
    """A tenant no other test uses, holding a closing tag, a style tag and an emoji code."""
    name = f"[/x] [bold]{secrets.token_hex(3)} :smile:"
    yield name
    run_ezq("limits", "delete", "--tenant", name)
    run_ezq("budgets", "delete", "--tenant", name)


def test_jobs_list_and_status_show_a_tenant_as_written(tenant: str) -> None:
    """`ezq jobs list` and `ezq status` print a tenant with markup in it as typed."""
    from sqlalchemy import text

    from service import cancel_job
    from service.db.session import transaction
    from tests.seeding import seed_job

    # `ezq status` shows the 20 tenant x model rows with the most jobs: this tenant's row
    # must be among them, in a database the rest of the suite shares.
    ((most,),) = sql(
        "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM jobs"
        " WHERE status IN ('queued', 'running', 'retrying') GROUP BY tenant, model) AS rows"
    )
    job_ids = [seed_job(tenant=tenant, status="queued", age_s=5) for _ in range(most + 1)]
    # Waiting an hour for a retry, so that no worker runs them before `ezq status` looks:
    # the suite's worker sweeps every job of the database, and a message whose job ended
    # runs a waiting job in its place; a retry not due is neither's.
    with transaction() as session:
        session.execute(
            text(
                "UPDATE jobs SET status = 'retrying', attempts = 1,"
                " dispatched_at = now() + interval '1 hour' WHERE id = ANY(:ids)"
            ),
            {"ids": job_ids},
        )
    try:
        assert tenant in shown("jobs", "list", "--tenant", tenant)
        screen = shown("status")
        assert tenant in screen, screen
    finally:
        for job_id in job_ids:
            cancel_job(job_id)


def test_limits_and_budgets_list_show_a_tenant_as_written(tenant: str) -> None:
    """`ezq limits list` and `ezq budgets list` print a tenant with markup in it as typed."""
    shown("limits", "set", "--tenant", tenant, "--concurrency", "3")
    shown("budgets", "set", "--tenant", tenant, "--monthly-usd", "5")

    assert tenant in shown("limits", "list")
    assert tenant in shown("budgets", "list", "--tenant", tenant)


def test_usage_by_tenant_shows_a_tenant_as_written() -> None:
    """`ezq usage --by tenant` prints a tenant with markup in it, and its own styled cells."""
    from service.db.session import transaction
    from service.usage.synthetic import SeedPlan, seed_usage

    tag = secrets.token_hex(4)
    prefix = f"[/x] [bold]{tag}"
    plan = SeedPlan(
        rows=1,
        days=1,
        tenants=1,
        models=("glm-5.1",),
        unpriced_models=("glm-5.1",),
        stuck_jobs=0,
        failed_share=0.0,
        retried_share=0.0,
        tenant_prefix=prefix,
        tag=tag,
    )
    with transaction() as session:
        seed_usage(session, plan)
    ((name,),) = sql("SELECT DISTINCT tenant FROM token_usage WHERE tenant LIKE :p", p=f"%{tag}%")

    table = shown("usage", "--by", "tenant", "--tenant", name, "--since", "2d")
    assert name in table
    assert "unpriced" in table.lower() and "Total" in table


def test_keys_list_shows_a_tenant_as_written(tenant: str) -> None:
    """`ezq keys list` prints a key's tenant and name with markup in them as typed."""
    name = f"[red]key[/] {secrets.token_hex(3)}"
    done = run_ezq("keys", "create", "--tenant", tenant, "--name", name, "--format", "json")
    assert done.returncode == 0, done.stderr
    (line,) = [line for line in shown("keys", "list").splitlines() if name in line]
    assert tenant in line


def test_prices_list_shows_a_model_as_written() -> None:
    """`ezq prices list` prints a model name with markup in it as typed."""
    model = f"[/m]-{uuid.uuid4().hex[:8]}"
    shown("prices", "set", model, "--input", "1", "--cached-input", "0.5", "--output", "2")

    assert model in shown("prices", "list", "--model", model)


def test_webhooks_list_shows_a_receivers_answer_as_written() -> None:
    """`ezq webhooks list` prints a receiver's answer with markup in it as typed."""
    from sqlalchemy import text

    from service.db.session import get_engine
    from tests.seeding import seed_job

    job_id = seed_job(status="failed", error_type="server_error")
    answer = "HTTP 500: [/oops] [link=http://evil]x[/link]"
    with get_engine().begin() as conn:
        conn.execute(
            text(
                "INSERT INTO webhook_deliveries (id, job_id, event_type, url, payload, status,"
                " attempts, last_status_code, last_error)"
                " VALUES (gen_random_uuid(), :job, 'job.failed', 'http://127.0.0.1:9/', '{}',"
                " 'failed', 1, 500, :answer)"
            ),
            {"job": job_id, "answer": answer},
        )

    assert answer in shown("webhooks", "list", "--job", str(job_id))


def test_dead_letters_list_shows_a_reason_whole() -> None:
    """`ezq dead-letters list` prints a reason with brackets in it whole, not cut at them."""
    from sqlalchemy import text

    from service.db.session import get_engine

    reason = f"the body is not [args, kwargs, options] {secrets.token_hex(3)}"
    with get_engine().begin() as conn:
        letter = conn.execute(
            text(
                "INSERT INTO dead_letters (received_at, reason, raw, raw_bytes)"
                " VALUES (:at, :reason, 'x', 1) RETURNING id"
            ),
            {"at": datetime.now(UTC), "reason": reason},
        ).scalar_one()
    try:
        assert reason in shown("dead-letters", "list", "--limit", "10000")
    finally:
        with get_engine().begin() as conn:
            conn.execute(text("DELETE FROM dead_letters WHERE id = :id"), {"id": letter})


def test_demo_report_shows_a_reply_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    """`ezq demo` prints a model's reply with markup in it as the model wrote it."""
    from service import demo

    reply = "Use [/x] and [bold]this[/bold] :smile:"
    job = {
        "job_id": uuid.uuid4(),
        "conversation_id": uuid.uuid4(),
        "status": "succeeded",
        "attempts": 1,
        "content": reply,
        "error": None,
        "model": "[m]",
        "usage": {"prompt_tokens": 3, "cached_tokens": 0, "completion_tokens": 5},
    }
    demo._report([job])

    out = capsys.readouterr().out
    assert reply in out and "Turn 1" in out and "[m]" in out

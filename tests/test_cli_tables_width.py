"""Listing tables keep ids whole at any width, size their columns by what the cells hold,
show what triage needs (`webhooks list`: the job, the receiver, the answer), and say on
stderr when `--limit` cut a listing; `budgets list` gives exact amounts in JSON and CSV."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterator
from decimal import Decimal

import pytest
from sqlalchemy import text

from tests.conftest import run_ezq, sql
from tests.seeding import seed_job

pytestmark = pytest.mark.usefixtures("service_env")


@pytest.fixture
def tenant() -> str:
    return f"t{uuid.uuid4().hex[:7]}"  # 8 characters, like a short real tenant name


def ezq(*args: str, columns: int = 80) -> tuple[str, str]:
    done = run_ezq(*args, env={"COLUMNS": str(columns)})
    assert done.returncode == 0 and "Traceback" not in done.stderr, (done.stdout, done.stderr)
    return done.stdout, done.stderr


def widest(out: str) -> int:
    return max(len(line) for line in out.splitlines())


def line_of(out: str, needle: str) -> str:
    (line,) = [line for line in out.splitlines() if needle in line]
    return line


def seed_delivery(
    job_id: uuid.UUID,
    *,
    status: str = "failed",
    event: str = "job.failed",
    url: str = "https://hooks.example.com/ezq/in",
    answer: str | None = "HTTP 503: Service Unavailable",
) -> uuid.UUID:
    """A delivery that has ended (``failed`` or ``delivered``: no worker picks it up)."""
    from service.db.session import transaction

    delivery_id = uuid.uuid4()
    with transaction() as session:
        session.execute(
            text(
                "INSERT INTO webhook_deliveries (id, job_id, event_type, url, payload, status,"
                " attempts, last_status_code, last_error)"
                " VALUES (:id, :job, :event, :url, '{}', :status, 5, 503, :answer)"
            ),
            {
                "id": delivery_id,
                "job": job_id,
                "event": event,
                "url": url,
                "status": status,
                "answer": answer,
            },
        )
    return delivery_id


def test_jobs_list_prints_the_job_id_whole_at_any_width(tenant: str) -> None:
    """Narrow terminals leave columns out rather than cut the id; narrower than an id, the
    line is longer than the terminal but the id is whole."""
    job_id = seed_job(status="failed", error_type="client_error", tenant=tenant)
    for columns in (60, 50, 40):
        out, err = ezq("jobs", "list", "--tenant", tenant, "--limit", "1", columns=columns)
        assert str(job_id) in out, (columns, out)
        assert widest(out) <= columns, out
    assert "not shown at 40 columns: STATUS, AGE, MODEL, TENANT, ERROR" in err
    out, _ = ezq("jobs", "list", "--tenant", tenant, columns=30)
    assert str(job_id) in out


def test_webhooks_list_prints_delivery_ids_whole_at_any_width(tenant: str) -> None:
    job_id = seed_job(status="failed", error_type="client_error", tenant=tenant)
    delivery_id = seed_delivery(job_id)
    for columns in (60, 50, 40):
        out, _ = ezq("webhooks", "list", "--job", str(job_id), columns=columns)
        assert str(delivery_id) in out, (columns, out)
        assert widest(out) <= columns, out


def test_jobs_list_columns_follow_their_cells(tenant: str) -> None:
    """At 80 columns a short error type stays whole (model and tenant are cut first); at
    140 every cell is whole and the table is no wider than its cells."""
    short = seed_job(status="failed", error_type="client_error", tenant=tenant, model="kimi-k2.6")
    out, _ = ezq("jobs", "list", "--tenant", tenant, columns=80)
    assert widest(out) <= 80, out
    line = line_of(out, str(short))
    assert line.split()[-1] == "client_error", out

    other = f"{tenant}-wide"
    long_error = seed_job(
        status="failed", error_type="gateway_tool_calls_missing", tenant=other, model="glm-5.1"
    )
    out, _ = ezq("jobs", "list", "--tenant", other, columns=140)
    line = line_of(out, str(long_error))
    assert line.split()[-3:] == ["glm-5.1", other, "gateway_tool_calls_missing"], out
    assert widest(out) < 110, "sized by the cells, not stretched to the terminal"

    # A model longer than the room left is cut with an ellipsis; the error type stays whole.
    long_model = "a-model-name-that-is-much-longer-than-the-table-has-room-for-2026"
    cut = seed_job(status="failed", error_type="server_error", tenant=tenant, model=long_model)
    out, _ = ezq("jobs", "list", "--tenant", tenant, columns=80)
    assert widest(out) <= 80, out
    line = line_of(out, str(cut))
    assert line.split()[-1] == "server_error" and "…" in line, out


def test_webhooks_list_shows_the_job_the_receiver_and_the_answer(tenant: str) -> None:
    """A wide table has the job id and the receiver's URL without its query string (the
    receiver's token); at 80 columns the answer gets the room, and stderr says what is
    left out."""
    ((since,),) = sql("SELECT now()")  # only this test's delivery is listed
    since = since.isoformat()
    job_id = seed_job(status="failed", error_type="client_error", tenant=tenant)
    delivery_id = seed_delivery(
        job_id, url="https://hooks.example.com/ezq/in?token=s3cret-TOKEN#frag"
    )

    out, _ = ezq("webhooks", "list", "--since", since, columns=200)
    line = line_of(out, str(delivery_id))
    assert str(job_id) in line, out
    assert "https://hooks.example.com/ezq/in" in line
    assert "HTTP 503: Service Unavailable" in line
    assert "s3cret" not in out and "token=" not in out

    out, err = ezq("webhooks", "list", "--since", since, columns=80)
    assert widest(out) <= 80, out
    line = line_of(out, str(delivery_id))
    assert "HTTP 503: Serv" in line, out
    assert "job.failed" in line
    hidden = err.partition("not shown at 80 columns: ")[2]
    assert "JOB/BATCH ID" in hidden and "URL" in hidden, err


def test_webhooks_list_repeated_status_values_are_alternatives(tenant: str) -> None:
    job_id = seed_job(status="failed", error_type="client_error", tenant=tenant)
    failed = seed_delivery(job_id, status="failed", event="job.failed")
    delivered = seed_delivery(job_id, status="delivered", event="job.succeeded", answer=None)

    def listed(*statuses: str) -> set[str]:
        args = [arg for status in statuses for arg in ("--status", status)]
        out, _ = ezq("webhooks", "list", "--job", str(job_id), *args, "--format", "json")
        return {row["id"] for row in json.loads(out)}

    assert listed("delivered", "failed") == {str(failed), str(delivered)}
    assert listed("failed", "delivered") == {str(failed), str(delivered)}
    assert listed("failed") == {str(failed)}
    assert listed("pending") == set()


def test_a_listing_cut_by_limit_says_so_on_stderr(tenant: str) -> None:
    """Table, JSON and CSV alike: stdout holds only the rows, stderr the note."""
    jobs = [seed_job(status="failed", error_type="timeout", tenant=tenant) for _ in range(3)]
    note = "showing the newest 2 jobs; more match (--limit N to see more)"

    out, err = ezq("jobs", "list", "--tenant", tenant, "--limit", "2")
    assert note in err and len([j for j in jobs if str(j) in out]) == 2
    out, err = ezq("jobs", "list", "--tenant", tenant, "--limit", "2", "--format", "json")
    assert len(json.loads(out)) == 2 and note in err
    out, err = ezq("jobs", "list", "--tenant", tenant, "--limit", "2", "--format", "csv")
    assert len(list(csv.DictReader(io.StringIO(out)))) == 2 and note in err
    _, err = ezq("jobs", "list", "--tenant", tenant, "--limit", "3")
    assert "more match" not in err

    seed_delivery(jobs[0], event="job.failed")
    seed_delivery(jobs[0], event="job.cancelled")
    out, err = ezq("webhooks", "list", "--job", str(jobs[0]), "--limit", "1")
    assert "showing the newest 1 delivery; more match (--limit N to see more)" in err
    _, err = ezq("webhooks", "list", "--job", str(jobs[0]), "--limit", "2")
    assert "more match" not in err


@pytest.fixture
def cheap_tenant() -> Iterator[str]:
    """A tenant that spent $0.0033678 this month (more decimals than a budget keeps)."""
    from tests.seeding import seed_cheap_usage

    name = seed_cheap_usage(Decimal("0.0033678"), model="glm-5.1")
    yield name
    run_ezq("budgets", "delete", "--tenant", name)


def test_budgets_list_machine_formats_are_exact(cheap_tenant: str) -> None:
    """JSON and CSV carry the exact spend and remainder; the table rounds to 6 decimals."""
    ezq("budgets", "set", "--tenant", cheap_tenant, "--monthly-usd", "5")
    args = ("budgets", "list", "--tenant", cheap_tenant)

    (entry,) = json.loads(ezq(*args, "--format", "json")[0])
    assert Decimal(entry["spent_usd"]) == Decimal("0.0033678")
    assert Decimal(entry["remaining_usd"]) == Decimal("4.9966322")
    assert Decimal(entry["monthly_usd"]) == 5 and Decimal(entry["reserved_usd"]) == 0
    (row,) = csv.DictReader(io.StringIO(ezq(*args, "--format", "csv")[0]))
    assert Decimal(row["spent_usd"]) == Decimal("0.0033678")
    assert Decimal(row["remaining_usd"]) == Decimal("4.9966322")
    table, _ = ezq(*args)
    assert line_of(table, cheap_tenant).split()[-4:] == ["$5.00", "$0.003368", "$0.00", "$4.996632"]

"""`ezq dead-letters list`, `ezq limits list` and `ezq budgets list` are listings like the
others: `--format table|json|csv`, tables that fit 80 columns when piped, CSV without
formulas, and `--since 7d|DATE` where they filter by time."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from tests.conftest import run_ezq, sweep_paused

pytestmark = pytest.mark.usefixtures("service_env")

DANGEROUS = ("=", "+", "-", "@", "\t", "\r")


def ok(*args: str) -> str:
    done = run_ezq(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def widest(text: str) -> int:
    return max(len(line) for line in text.splitlines())


def csv_rows(text: str) -> list[dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO(text)))
    formulas = [cell for row in rows for cell in row.values() if cell.startswith(DANGEROUS)]
    assert not formulas, formulas
    return rows


def one_line_error(done: Any, code: int, start: str) -> None:
    """A bad value is one line; a usage error (2) is click's usage block and one error line."""
    assert done.returncode == code, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr and (code == 2 or len(lines) == 1), lines
    assert start in lines[-1], lines


def insert_dead_letter(received_at: datetime, **fields: Any) -> int:
    from sqlalchemy import text

    from service.db.session import get_engine

    row = {"queue": None, "task_name": None, "message_id": None, "worker": None, **fields}
    with get_engine().begin() as conn:
        return int(
            conn.execute(
                text(
                    "INSERT INTO dead_letters"
                    " (received_at, queue, reason, task_name, message_id, worker, raw, raw_bytes)"
                    " VALUES (:received_at, :queue, :reason, :task_name, :message_id, :worker,"
                    " :raw, :raw_bytes) RETURNING id"
                ),
                {**row, "received_at": received_at, "raw_bytes": len(row["raw"])},
            ).scalar_one()
        )


@pytest.fixture
def foreign_letters() -> Iterator[tuple[int, int, str]]:
    """A recent dead letter from a foreign producer whose every text starts a formula, and
    one received ten days ago; deleted after."""
    from tests.conftest import sql

    task = '=HYPERLINK("http://evil","a task name far too long for any eighty-column table")'
    recent = insert_dead_letter(
        datetime.now(UTC),
        queue="@queue",
        reason="+the message names a task this worker does not know " * 2,
        task_name=task,
        message_id="-1",
        worker="\tworker",
        raw=b"=1+2 " + b"x" * 200,
    )
    old = insert_dead_letter(
        datetime.now(UTC) - timedelta(days=10), reason="the message is not JSON", raw=b"old"
    )
    yield recent, old, task
    from sqlalchemy import text

    from service.db.session import get_engine

    with get_engine().begin() as conn:
        conn.execute(text("DELETE FROM dead_letters WHERE id IN (:a, :b)"), {"a": recent, "b": old})
    assert sql("SELECT count(*) FROM dead_letters WHERE id IN (:a, :b)", a=recent, b=old) == [(0,)]


def test_dead_letters_list_formats_width_and_csv(foreign_letters: tuple[int, int, str]) -> None:
    """The table fits 80 columns with ids whole; CSV quotes a foreign task name that would
    be a formula; JSON keeps the exact text and a 60-character preview of the raw bytes."""
    recent, _, task = foreign_letters

    table = ok("dead-letters", "list", "--limit", "10000")
    assert widest(table) <= 80, table
    assert any(line.split()[:1] == [str(recent)] for line in table.splitlines()), table

    rows = {int(r["id"]): r for r in csv_rows(ok("dead-letters", "list", "--format", "csv"))}
    assert rows[recent]["task_name"] == "'" + task
    assert rows[recent]["queue"] == "'@queue" and rows[recent]["message_id"] == "'-1"
    assert rows[recent]["raw_bytes"] == "205" and rows[recent]["raw"].startswith("'=1+2 x")

    listed = json.loads(ok("dead-letters", "list", "--format", "json", "--raw"))
    entry = next(e for e in listed if e["id"] == recent)
    assert entry["task_name"] == task and entry["raw"] == "=1+2 " + "x" * 200
    assert len(next(e for e in json.loads(ok("dead-letters", "list", "--format", "json"))
                    if e["id"] == recent)["raw"]) == 60  # fmt: skip


def test_dead_letters_since_and_until_take_the_shared_grammar(
    foreign_letters: tuple[int, int, str],
) -> None:
    """--since 7d|DATE and --until DATE as in `ezq jobs list`; a bad time is one line."""
    recent, old, _ = foreign_letters

    def ids(*args: str) -> set[int]:
        listed = json.loads(ok("dead-letters", "list", "--format", "json", *args))
        return {e["id"] for e in listed} & {recent, old}

    assert ids("--since", "7d") == {recent}
    assert ids("--since", "11d") == {recent, old}
    day = f"{datetime.now(UTC) - timedelta(days=10):%Y-%m-%d}"
    assert ids("--since", day, "--until", day) == {old}
    one_line_error(
        run_ezq("dead-letters", "list", "--since", "yesterday"),
        1,
        "ezq: error: --since: must be Nd, Nh or Nm ago",
    )


def test_dead_letters_purge_refuses_in_one_line(foreign_letters: tuple[int, int, str]) -> None:
    """purge takes --before in the same grammar; --all goes alone; errors are one line."""
    recent, old, _ = foreign_letters
    one_line_error(run_ezq("dead-letters", "purge"), 2, "say which: --before 7d|DATE")
    one_line_error(
        run_ezq("dead-letters", "purge", "--all", "--id", str(recent)), 2, "give it alone"
    )
    one_line_error(
        run_ezq("dead-letters", "purge", "--before", "last week"), 1, "ezq: error: --before: "
    )
    # Both given: only what matches both, so the recent one stays.
    kept = ok("dead-letters", "purge", "--before", "7d", "--id", str(recent))
    assert kept.strip() == "deleted 0 dead letters"
    gone = ok("dead-letters", "purge", "--before", "7d", "--id", str(old), "--id", str(recent))
    assert gone.strip() == "deleted 1 dead letter"


@pytest.fixture
def scope() -> Iterator[tuple[str, str]]:
    """A tenant and model no job uses, that start a formula and are longer than a column."""
    tenant = f'=HYPERLINK("http://evil") tenant with a long name {uuid.uuid4().hex}'
    model = f"@model-with-a-long-name-{uuid.uuid4().hex}"
    yield tenant, model
    run_ezq("limits", "delete", "--tenant", tenant, "--model", model)
    run_ezq("budgets", "delete", "--tenant", tenant, "--model", model)


def test_limits_list_formats_width_and_csv(scope: tuple[str, str]) -> None:
    tenant, model = scope
    ok(
        "limits", "set", "--tenant", tenant, "--model", model, "--concurrency", "3",
        "--rpm", "1000", "--tpm", "123456789", "--adaptive-ttft-ms", "1500",
    )  # fmt: skip

    table = ok("limits", "list")
    assert widest(table) <= 80, table
    (line,) = [line for line in table.splitlines() if line.startswith("=HYPERLINK")]
    assert line.split()[-3:] == ["1,000", "123,456,789", "1,500"], line

    (row,) = [
        r for r in csv_rows(ok("limits", "list", "--format", "csv")) if r["model"] == "'" + model
    ]
    assert row["tenant"] == "'" + tenant
    assert (row["max_concurrent"], row["tokens_per_window"], row["adaptive_ttft_ms"]) == (
        "3", "123456789", "1500",
    )  # fmt: skip
    (entry,) = [
        e for e in json.loads(ok("limits", "list", "--format", "json")) if e["model"] == model
    ]
    assert entry["tenant"] == tenant and entry["requests_per_window"] == 1000


def test_budgets_list_formats_width_and_csv(scope: tuple[str, str]) -> None:
    tenant, model = scope
    ok("budgets", "set", "--tenant", tenant, "--model", model, "--monthly-usd", "12.5")

    table = ok("budgets", "list")
    assert widest(table) <= 80, table
    (line,) = [line for line in table.splitlines() if line.startswith("=HYPERLINK")]
    assert "$12.50" in line

    args = ("budgets", "list", "--tenant", tenant)
    (row,) = csv_rows(ok(*args, "--format", "csv"))
    assert (row["tenant"], row["model"]) == ("'" + tenant, "'" + model)
    assert Decimal(row["monthly_usd"]) == Decimal("12.5") == Decimal(row["remaining_usd"])
    (entry,) = json.loads(ok(*args, "--format", "json"))
    assert (entry["tenant"], entry["model"], Decimal(entry["spent_usd"])) == (tenant, model, 0)


def test_budgets_list_never_shows_a_small_spend_as_zero() -> None:
    """Three thousandths of a cent spent reads $0.000035 in the table (the 6 decimals a
    budget keeps), not $0.0000; whole amounts keep 2 decimals and the table 80 columns."""
    from tests.seeding import seed_cheap_usage

    tenant = seed_cheap_usage(Decimal("0.000035"), model="glm-5.1")
    ok("budgets", "set", "--tenant", tenant, "--monthly-usd", "5")
    try:
        table = ok("budgets", "list", "--tenant", tenant)
        assert widest(table) <= 80, table
        (line,) = [line for line in table.splitlines() if tenant in line]
        assert line.split()[-4:] == ["$5.00", "$0.000035", "$0.00", "$4.999965"], line
    finally:
        run_ezq("budgets", "delete", "--tenant", tenant)


def test_status_csv_has_every_tenant_model_line_without_formulas() -> None:
    """`ezq status --format csv`: the backlog lines of `--format json`, one per tenant and
    model, with a tenant that would be a formula quoted."""
    from tests.seeding import seed_job

    tenant = f"=cmd|' /C calc'!A0 {uuid.uuid4().hex[:8]}"
    # The jobs have no message: the suite's worker, which sweeps this database every
    # second, would publish and run them before `ezq status` looks.
    with sweep_paused():
        seed_job(tenant=tenant, status="queued", age_s=60)
        seed_job(tenant=tenant, status="retrying", error_type="timeout")
        rows = csv_rows(ok("status", "--format", "csv"))
    (row,) = [r for r in rows if r["tenant"] == "'" + tenant]
    assert (row["model"], row["queued"], row["retrying"], row["in_flight"]) == (
        "glm-5.1", "1", "1", "0",
    )  # fmt: skip
    assert datetime.fromisoformat(row["oldest_queued_at"]) < datetime.now(UTC)
    assert list(rows[0]) == [
        "tenant", "model", "queued", "in_flight", "retrying", "throttled", "oldest_queued_at",
    ]  # fmt: skip


def test_prices_list_fits_80_columns_and_shortens_only_the_model() -> None:
    """A long model name shortens with an ellipsis; ids, times and amounts stay whole."""
    model = f"long-model-name-for-the-width-test-{uuid.uuid4().hex}"
    ok(
        "prices",
        "set",
        model,
        "--input",
        "123.456789",
        "--cached-input",
        "0.5",
        "--output",
        "987.654321",
        "--from",
        "2021-03-04",
    )
    (record,) = [
        p for p in json.loads(ok("prices", "list", "--format", "json")) if p["model"] == model
    ]
    assert record["input_per_mtok"] == "123.456789"
    table = ok("prices", "list")
    assert widest(table) <= 80
    (line,) = [row for row in table.splitlines() if row.split()[:1] == [str(record["id"])]]
    assert "…" in line and model not in line and line.split()[1].startswith("long")
    assert "2021-03-04 00:00" in line and "123.456789" in line and "987.654321" in line

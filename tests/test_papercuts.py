"""What a new user hit, one test each: one line instead of a traceback, consistent options,
readable charts, follow-up turns without --tenant, install hints that name this project."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from service.usage.chart import MISSING_EXTRA, build_figure
from service.usage.report import DayModel, ReportQuery
from tests.conftest import free_port, run_ezq


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("postgresql://[::1", "is not a valid URL"),
        ("postgresql://localhost:notaport/ezq", "is not a valid URL"),
        ("postgresql://localhost:5432", "names no database"),
        ("postgresql://localhost:5432/", "names no database"),
    ],
)
def test_bad_database_url_is_one_line(url: str, reason: str) -> None:
    """A malformed DATABASE_URL is one configuration line (the URL itself not echoed)."""
    done = run_ezq("status", env={"DATABASE_URL": url})
    assert done.returncode == 2
    assert done.stderr.startswith("ezq: configuration error: DATABASE_URL: ")
    assert reason in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("name", "reason"),
    [("missing-folder/usage.png", "does not exist"), ("usage.jpg", "must end in .png")],
)
def test_chart_path_is_checked_first(
    service_env: dict[str, str], tmp_path: Path, name: str, reason: str
) -> None:
    """--chart into a missing folder or to a non-.png name fails at once, writing nothing."""
    target = tmp_path / name
    done = run_ezq("usage", "--chart", str(target))
    assert done.returncode == 1
    assert done.stderr.startswith("ezq: error: --chart: ") and reason in done.stderr
    assert not target.exists() and "Traceback" not in done.stderr


@pytest.mark.usefixtures("service_env")
def test_chart_that_cannot_be_written_is_one_line() -> None:
    """--chart to a folder that exists but takes no file fails in one line, no traceback."""
    done = run_ezq("usage", "--chart", "/proc/ezq-usage.png")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("ezq: error: --chart: cannot write '/proc/ezq-usage.png'")


def test_db_upgrade_of_an_unreachable_server_is_one_line() -> None:
    """`ezq db upgrade` against a port where no server listens says so in one line."""
    url = f"postgresql://127.0.0.1:{free_port()}/ezq"
    done = run_ezq("db", "upgrade", env={"DATABASE_URL": url})
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("ezq: error: cannot reach the database at ")


@pytest.mark.usefixtures("service_env")
def test_keys_list_takes_every_format_and_fits_80_columns() -> None:
    """`ezq keys list` is a listing like the others: table (80 columns, ids whole), JSON, CSV."""
    tenants = [f"tenant-with-a-long-name-{i}-{uuid.uuid4().hex}" for i in range(3)]
    name = "a key whose name is longer than any terminal is wide " * 3
    args = [arg for t in tenants for arg in ("--tenant", t)]
    created = run_ezq("keys", "create", *args, "--name", name, "--format", "json")
    assert created.returncode == 0, created.stderr
    key_id = json.loads(created.stdout)["id"]

    table = run_ezq("keys", "list")
    assert table.returncode == 0, table.stderr
    assert max(len(line) for line in table.stdout.splitlines()) <= 80
    assert any(line.startswith(key_id) for line in table.stdout.splitlines())
    rows = list(csv.DictReader(io.StringIO(run_ezq("keys", "list", "--format", "csv").stdout)))
    row = next(r for r in rows if r["id"] == key_id)
    assert (row["name"], json.loads(row["tenants"]), row["status"]) == (name, tenants, "active")
    listed = json.loads(run_ezq("keys", "list", "--format", "json").stdout)
    assert next(r for r in listed if r["id"] == key_id)["tenants"] == tenants


@pytest.mark.parametrize(
    "args",
    [
        ("jobs", "list", "--tenant", "t\udcff"),
        ("keys", "create", "--tenant", "t\udcff"),
        ("purge", "--tenant", "t\udcff", "--dry-run"),
        ("enqueue", "--model", "glm-5.1", "bad \udcff byte"),
    ],
)
def test_arguments_that_are_not_utf8_are_one_line(args: tuple[str, ...]) -> None:
    """Bytes that are not UTF-8 on the command line (lone surrogates to Python) are refused
    in one line naming them, by every command, before anything is looked up or stored."""
    done = run_ezq(*args)  # subprocess passes the surrogate on as the byte 0xff
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("ezq: error: argument ") and "\\xff" in done.stderr
    assert "is not valid UTF-8 text" in done.stderr


def test_bad_since_names_the_forms_it_takes() -> None:
    """A --since that is no time lists the forms it could be, in their own spelling."""
    done = run_ezq("jobs", "list", "--since", "yesterday")
    assert done.returncode == 1
    assert "--since: must be Nd, Nh or Nm ago, a day YYYY-MM-DD (UTC)" in done.stderr


def test_chart_cost_axis_reads_real_values_and_the_title_names_filters() -> None:
    """Cost ticks of a cheap month are not all $0.00; the title says which filters applied."""
    query = ReportQuery(
        since=date(2026, 11, 1), until=date(2026, 11, 3), tenants=("acme",), models=("glm-5.1",)
    )
    cells = [
        DayModel(date(2026, 11, d), "glm-5.1", 1000 * d, Decimal("0.0004") * d, 0)
        for d in (1, 2, 3)
    ]
    figure = build_figure(query, cells)
    figure.canvas.draw()
    cost_axes = figure.axes[1]
    labels = [t.get_text() for t in cost_axes.get_yticklabels() if t.get_text()]
    assert len(set(labels)) > 1, labels
    assert any(label not in ("$0.00", "$0") for label in labels)
    assert "$0.0012" in labels or "$0.001" in labels or any("0.001" in lb for lb in labels)
    title = figure._suptitle.get_text()
    assert "tenant acme" in title and "model glm-5.1" in title


def test_install_hint_names_this_project() -> None:
    """The hint for the charts extra installs this checkout or its wheel, not a PyPI name."""
    assert "pip install -e '.[charts]'" in MISSING_EXTRA
    assert "'ezq[charts]'" not in MISSING_EXTRA


@pytest.mark.usefixtures("worker")
def test_follow_up_turn_without_tenant_keeps_the_conversations_tenant(fake_gateway: Any) -> None:
    """A next turn enqueued without --tenant continues the conversation under its tenant."""
    first = run_ezq("enqueue", "--model", "glm-5.1", "--tenant", "acme", "--wait", "hello")
    assert first.returncode == 0, first.stderr
    conversation = json.loads(first.stdout)["conversation_id"]

    follow = run_ezq(
        "enqueue", "--model", "glm-5.1", "--conversation", conversation, "--wait", "more"
    )
    assert follow.returncode == 0, follow.stderr
    assert json.loads(follow.stdout)["tenant"] == "acme"
    # A different tenant is still refused, as if the conversation did not exist (issue 8).
    other = run_ezq(
        "enqueue",
        "--model",
        "glm-5.1",
        "--conversation",
        conversation,
        "--tenant",
        "globex",
        "more",
    )
    assert other.returncode == 1 and f"no conversation {conversation}" in other.stderr


@pytest.mark.usefixtures("worker")
def test_webhooks_list_takes_format_and_since(fake_gateway: Any) -> None:
    """`webhooks list` takes --format table|json|csv and --since 7d like every listing."""
    for fmt in ("json", "csv", "table"):
        done = run_ezq("webhooks", "list", "--since", "7d", "--format", fmt)
        assert done.returncode == 0, done.stderr
    parsed = json.loads(run_ezq("webhooks", "list", "--since", "1d", "--format", "json").stdout)
    assert isinstance(parsed, list)
    header = run_ezq("webhooks", "list", "--format", "csv").stdout.splitlines()[0]
    assert next(csv.reader(io.StringIO(header)))[:2] == ["id", "job_id"]
    redeliver = run_ezq("webhooks", "redeliver", "--failed", "--since", "7d")
    assert redeliver.returncode == 0, redeliver.stderr
    assert "deliveries" in redeliver.stderr or "delivery" in redeliver.stderr
    assert "1 webhook deliveries" not in redeliver.stderr


def test_one_delivery_is_singular() -> None:
    """The redelivery message counts in good English."""
    from service.webhooks.cli import deliveries_phrase

    assert deliveries_phrase(1) == "1 webhook delivery"
    assert deliveries_phrase(3) == "3 webhook deliveries"


def test_missing_schema_is_one_line(tmp_path: Path) -> None:
    """A database without the ezq schema gives one line that says to run `ezq db upgrade`."""
    import psycopg

    from tests.conftest import ADMIN_DSN

    name = f"ezq_empty_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"
        done = run_ezq("jobs", "list", env={"DATABASE_URL": url})
        assert done.returncode == 2
        assert "ezq db upgrade" in done.stderr and "Traceback" not in done.stderr
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')

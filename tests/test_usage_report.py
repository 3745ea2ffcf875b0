"""``ezq usage``, run as a real subprocess: the right totals in every format, and the chart."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from service.db.migrate import throwaway_database
from service.db.session import get_engine, transaction
from service.usage.chart import MISSING_EXTRA
from service.usage.money import usd_shown
from service.usage.periods import SINCE_FORMS
from service.usage.synthetic import SeedPlan, seed_usage
from tests.conftest import ADMIN_DSN, run_ezq

PLAN = SeedPlan(
    rows=2000,
    days=60,
    tenants=3,
    models=("alpha", "beta", "gamma", "unpriced"),
    unpriced_models=("unpriced",),
    tenant_prefix="team",
)
FIELDS = (
    "jobs",
    "prompt_tokens",
    "cached_tokens",
    "uncached_prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_usd",
    "unpriced_jobs",
    "cache_write_tokens",  # last in JSON and CSV, as in the usage views
)
# The table's token columns: cache writes beside the uncached prompt tokens they are in.
TABLE_COUNTS = (
    "jobs",
    "prompt_tokens",
    "cached_tokens",
    "uncached_prompt_tokens",
    "cache_write_tokens",
    "completion_tokens",
    "total_tokens",
)


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """A throwaway database holding only two months of synthetic usage."""
    with throwaway_database(ADMIN_DSN, prefix="ezq_test_report") as url:
        with transaction(url) as session:
            seed_usage(session, PLAN)
        yield url
        get_engine(url).dispose()


def ezq(database: str, *args: str, env: dict[str, str] | None = None) -> Any:
    return run_ezq("usage", *args, env={"DATABASE_URL": database, **(env or {})})


def today() -> date:
    return datetime.now(UTC).date()


def expected(
    database: str, since: date, until: date, where: str = "TRUE", **params: Any
) -> dict[str, Any]:
    """The totals, summed straight from token_usage over [since 00:00, until+1 00:00) UTC."""
    start = datetime.combine(since, time(), UTC)
    end = datetime.combine(until + timedelta(days=1), time(), UTC)
    with get_engine(database).connect() as conn:
        row = conn.execute(
            text(
                "SELECT count(*), sum(prompt_tokens), sum(cached_tokens),"
                " sum(uncached_prompt_tokens), sum(completion_tokens), sum(total_tokens),"
                " sum(cost_usd), count(*) - count(cost_usd), sum(cache_write_tokens)"
                " FROM token_usage"
                f" WHERE created_at >= :start AND created_at < :end AND {where}"
            ),
            {"start": start, "end": end, **params},
        ).one()
    return dict(zip(FIELDS, row, strict=True))


def as_numbers(record: dict[str, Any]) -> dict[str, Any]:
    """A JSON or CSV record with amounts as exact Decimals and counts as ints."""
    out: dict[str, Any] = {}
    for name in FIELDS:
        value = record[name]
        if name == "cost_usd":
            out[name] = Decimal(value) if value not in (None, "") else None
        else:
            out[name] = int(value)
    return out


def test_json_totals_and_rows(database: str) -> None:
    """--format json gives exact totals for the last 30 days, one row per day, cost as text."""
    done = ezq(database, "--since", "30d", "--format", "json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    want = expected(database, today() - timedelta(days=29), today())
    assert as_numbers(report["totals"]) == want
    assert want["jobs"] > 0 and want["unpriced_jobs"] > 0
    assert isinstance(report["totals"]["cost_usd"], str)
    assert (report["since"], report["until"]) == (
        str(today() - timedelta(days=29)),
        str(today()),
    )
    days = [row["day"] for row in report["rows"]]
    assert days == sorted(days) and len(days) == len(set(days)) <= 30
    summed = sum(Decimal(row["cost_usd"]) for row in report["rows"] if row["cost_usd"])
    assert summed == want["cost_usd"]


def test_csv_rows_sum_to_the_totals_and_show_unpriced_as_empty(database: str) -> None:
    """--format csv has one line per model; columns sum to the totals, unpriced cost is empty."""
    since, until = today() - timedelta(days=44), today() - timedelta(days=3)
    done = ezq(
        database, "--since", str(since), "--until", str(until), "--by", "model", "--format", "csv"
    )
    assert done.returncode == 0, done.stderr
    records = list(csv.DictReader(io.StringIO(done.stdout)))
    assert list(records[0]) == ["model", *FIELDS]
    assert [r["model"] for r in records] == ["alpha", "beta", "gamma", "unpriced"]
    want = expected(database, since, until)
    for name in FIELDS:
        if name == "cost_usd":
            total: Any = sum(Decimal(r[name]) for r in records if r[name])
        else:
            total = sum(int(r[name]) for r in records)
        assert total == want[name], name
    unpriced = records[-1]
    assert unpriced["cost_usd"] == "" and unpriced["unpriced_jobs"] == unpriced["jobs"] != "0"


def test_table_shows_totals_and_unpriced(database: str) -> None:
    """The table ends with a totals line and shows unpriced usage as unpriced, not $0."""
    done = ezq(database, "--since", "60d", "--by", "model")
    assert done.returncode == 0, done.stderr
    want = expected(database, today() - timedelta(days=59), today())
    rows = {cells[0]: cells[1:] for cells in map(table_cells, done.stdout.splitlines()) if cells}
    assert rows["Total"] == [
        *(f"{want[name]:,}" for name in TABLE_COUNTS),
        usd_shown(want["cost_usd"]),
        f"{want['unpriced_jobs']:,}",
    ]
    assert rows["unpriced"][-2:] == ["unpriced", rows["unpriced"][0]]
    assert rows["alpha"][-2].startswith("$")


def test_table_never_shows_a_small_cost_as_zero(database: str) -> None:
    """A tenant's day of cheap calls ($0.000014, as JSON and CSV give it) reads $0.000014 in
    the table, not $0.0000; the totals line too."""
    from tests.seeding import seed_cheap_usage

    tenant = seed_cheap_usage(Decimal("0.000014"), model="alpha", url=database)
    done = ezq(database, "--since", "1d", "--by", "tenant", "--tenant", tenant)
    assert done.returncode == 0, done.stderr
    rows = {cells[0]: cells[1:] for cells in map(table_cells, done.stdout.splitlines()) if cells}
    assert rows[tenant][-2] == rows["Total"][-2] == "$0.000014", done.stdout
    report = ezq(database, "--since", "1d", "--tenant", tenant, "--format", "json").stdout
    assert json.loads(report)["totals"]["cost_usd"] == "0.000014"


def table_cells(line: str) -> list[str]:
    """The cells of a table line, whichever box characters the console chose."""
    cells = [cell.strip() for cell in re.split(r"[│┃|]", line)]
    return cells[1:-1] if len(cells) > 2 else []


def test_filters_and_tag_grouping(database: str) -> None:
    """--tenant, --model and --by tenant,tag:KEY narrow and group the same totals."""
    since = today() - timedelta(days=59)
    done = ezq(
        database,
        "--since",
        str(since),
        "--by",
        "tenant,tag:feature",
        "--tenant",
        "team-001",
        "--model",
        "alpha",
        "--model",
        "unpriced",
        "--format",
        "json",
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    want = expected(
        database,
        since,
        today(),
        "tenant = :tenant AND model IN ('alpha', 'unpriced')",
        tenant="team-001",
    )
    assert as_numbers(report["totals"]) == want
    assert {row["tenant"] for row in report["rows"]} == {"team-001"}
    assert {row["tag:feature"] for row in report["rows"]} <= {
        "chat",
        "search",
        "summarise",
        "classify",
        "extract",
    }
    assert report["tenants"] == ["team-001"]


def test_by_month(database: str) -> None:
    """--by month groups by UTC calendar month, written YYYY-MM."""
    done = ezq(database, "--since", "60d", "--by", "month", "--format", "json")
    assert done.returncode == 0, done.stderr
    months = [row["month"] for row in json.loads(done.stdout)["rows"]]
    assert months == sorted(months) and all(len(m) == 7 and m[4] == "-" for m in months)
    assert 2 <= len(months) <= 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--by", "week"], "ezq: error: --by: 'week' is not one of day, month, model, tenant"),
        (["--since", "2026-13-01"], f"ezq: error: --since: must be {SINCE_FORMS}"),
        (["--since", "3h"], f"ezq: error: --since: must be {SINCE_FORMS}, got '3h'"),
        (["--since", "-3d"], f"ezq: error: --since: must be {SINCE_FORMS}, got '-3d'"),
        (["--until", "7d"], "ezq: error: --until: must be a date YYYY-MM-DD, got '7d'"),
        (["--since", "0d"], "ezq: error: --since: must be 1d to 36600d, got '0d'"),
        (["--since", "99999999d"], "ezq: error: --since: must be 1d to 36600d"),
        (["--since", "2026-02-01", "--until", "2026-01-01"], "is after --until 2026-01-01"),
        (["--by", "day,month"], "day and month together"),
    ],
)
def test_bad_options_fail_with_one_line(database: str, args: list[str], message: str) -> None:
    """A bad option is one line on stderr naming it, and exit status 1."""
    done = ezq(database, *args)
    assert done.returncode == 1
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stdout == ""


def test_chart_is_a_png(database: str, tmp_path: Path) -> None:
    """--chart writes a PNG of daily tokens and cost by model that matplotlib reads back."""
    from matplotlib import image

    path = tmp_path / "usage.png"
    done = ezq(database, "--since", "30d", "--chart", str(path), "--format", "json")
    assert done.returncode == 0, done.stderr
    assert f"wrote {path}" in done.stderr
    assert json.loads(done.stdout)["totals"]["jobs"] > 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = image.imread(path)
    assert pixels.shape[0] >= 600 and pixels.shape[1] >= 800


def test_chart_without_matplotlib_is_a_clear_error(database: str, tmp_path: Path) -> None:
    """Without the charts extra, --chart fails with one line saying what to install."""
    stub = tmp_path / "stub" / "matplotlib"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('matplotlib is not installed')\n")
    path = tmp_path / "usage.png"
    done = ezq(database, "--chart", str(path), env={"PYTHONPATH": str(stub.parent)})
    assert done.returncode == 1
    assert done.stderr.strip() == f"ezq: error: {MISSING_EXTRA}"
    assert not path.exists()

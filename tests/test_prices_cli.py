"""``ezq prices ...`` run as a real subprocess against the test database."""

from __future__ import annotations

import csv
import io
import json
import secrets
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from service.db.session import transaction
from service.usage.synthetic import SeedPlan, seed_usage
from tests.conftest import run_ezq, sql

pytestmark = pytest.mark.usefixtures("service_env")


def ezq(*args: str) -> Any:
    return run_ezq("prices", *args)


def model_name() -> str:
    return f"cli-{secrets.token_hex(3)}"


def one_error_line(done: Any, text: str) -> None:
    assert done.returncode == 1, done
    assert done.stderr.strip().splitlines() == [f"ezq: error: {text}"]


def test_set_then_list_in_every_format() -> None:
    """prices set records a version; prices list shows it as a table, CSV and exact JSON."""
    model = model_name()
    first = ezq(
        "set",
        model,
        "--input",
        "3",
        "--cached-input",
        "0.30",
        "--output",
        "15",
        "--from",
        "2026-01-01",
    )
    assert first.returncode == 0, first.stderr
    assert first.stderr.startswith(f"{model}: price ")
    assert "from 2026-01-01T00:00:00+00:00" in first.stderr
    now = ezq(
        "set", model, "--input", "3.25", "--cached-input", "0.325", "--output", "16.0000000001"
    )
    assert now.returncode == 0, now.stderr

    listed = json.loads(ezq("list", "--model", model, "--format", "json").stdout)
    assert [(p["input_per_mtok"], p["output_per_mtok"], p["in_effect"]) for p in listed] == [
        ("3", "15", False),
        ("3.25", "16.0000000001", True),
    ]
    assert listed[0]["effective_from"] == "2026-01-01T00:00:00+00:00"
    assert listed[0]["currency"] == "USD"

    rows = list(
        csv.DictReader(io.StringIO(ezq("list", "--model", model, "--format", "csv").stdout))
    )
    assert [row["cached_input_per_mtok"] for row in rows] == ["0.3", "0.325"]

    table = ezq("list", "--model", model).stdout
    assert model in table and "16.0000000001" in table and "yes" in table


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--input", "abc"], "--input: must be a decimal number of USD, got 'abc'"),
        (["--cached-input", "-1"], "--cached-input: must not be negative, got '-1'"),
        (["--output", "1.00000000001"], "--output: at most 10 decimal places"),
        (["--from", "next week"], "--from: must be YYYY-MM-DD or an ISO 8601 date and time"),
    ],
)
def test_set_refuses_bad_values_in_one_line(args: list[str], error: str) -> None:
    """A bad price or start is one line naming the option, and nothing is written."""
    model = model_name()
    values = {"--input": "1", "--cached-input": "0.1", "--output": "2"}
    for option, value in zip(args[::2], args[1::2], strict=True):
        values[option] = value
    done = ezq("set", model, *(part for pair in values.items() for part in pair))
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith(f"ezq: error: {error}")
    assert sql("SELECT count(*) FROM model_prices WHERE model = :m", m=model) == [(0,)]


def test_set_refuses_to_edit_a_price() -> None:
    """A different price for the same model and start is refused: prices are versioned."""
    model = model_name()
    base = ["set", model, "--cached-input", "0.1", "--output", "2", "--from", "2026-02-01"]
    assert ezq(*base, "--input", "1").returncode == 0
    again = ezq(*base, "--input", "1")
    assert again.returncode == 0 and "unchanged" in again.stderr
    done = ezq(*base, "--input", "1.5")
    assert done.returncode == 1
    assert done.stderr.startswith(f"ezq: error: {model} already has a different price from")
    assert len(done.stderr.strip().splitlines()) == 1


def test_import_all_or_nothing(tmp_path: Path) -> None:
    """prices import writes every line, or on one bad line names it and writes none."""
    a, b = model_name(), model_name()
    header = "model,input_per_mtok,cached_input_per_mtok,output_per_mtok,effective_from\n"
    good = tmp_path / "good.csv"
    good.write_text(header + f"{a},1,0.1,4,2026-01-01\n{b},2,0.2,8,\n")
    done = ezq("import", str(good))
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "imported 2 prices, 0 unchanged"
    assert ezq("import", str(good)).stderr.strip() == "imported 0 prices, 2 unchanged"

    c = model_name()
    bad = tmp_path / "bad.csv"
    bad.write_text(header + f"{c},1,0.1,4,\n{c},1,0.1,x,2026-01-01\n")
    one_error_line(
        ezq("import", str(bad)),
        f"{bad}, line 3, column output_per_mtok: must be a decimal number of USD, got 'x';"
        " nothing was imported",
    )
    assert sql("SELECT count(*) FROM model_prices WHERE model = :m", m=c) == [(0,)]


def test_recompute_says_how_many_rows_it_priced() -> None:
    """prices recompute prices the unpriced rows of a newly priced model and says how many."""
    tag = secrets.token_hex(3)
    model = f"cli-rc-{tag}"
    plan = SeedPlan(
        rows=40,
        days=3,
        tenants=2,
        models=(model,),
        unpriced_models=(model,),
        stuck_jobs=0,
        tenant_prefix=f"cli-rc-{tag}",
        tag=tag,
    )
    with transaction() as session:
        seed_usage(session, plan)
    assert (
        ezq("set", model, "--input", "1", "--cached-input", "0.5", "--output", "2").returncode == 0
    )
    done = ezq("recompute", "--since", "5d", "--model", model)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "priced 40 usage rows"
    assert sql(
        "SELECT count(*) FROM token_usage WHERE model = :m AND cost_usd IS NULL", m=model
    ) == [(0,)]
    assert (
        ezq("recompute", "--since", "5d", "--model", model).stdout.strip() == "priced 0 usage rows"
    )


def test_recompute_names_the_since_forms_it_takes() -> None:
    """A bad --since says both forms it takes (Nd and a date), as `ezq usage` does."""
    done = ezq("recompute", "--since", "bogus")
    one_error_line(
        done, "--since: must be Nd (days ago, e.g. 7d) or a date YYYY-MM-DD, got 'bogus'"
    )


def test_cache_write_price_from_set_and_import(tmp_path: Path) -> None:
    """--cache-write and the optional cache_write_input_per_mtok column record a cache-write
    price; without one it stays empty (cache writes then cost the input price)."""
    model, other = model_name(), model_name()
    base = ("set", model, "--input", "3", "--cached-input", "0.3", "--output", "15")
    done = ezq(*base, "--cache-write", "3.75")
    assert done.returncode == 0, done.stderr
    bad = ezq(*base, "--cache-write", "-1")
    assert bad.returncode == 1 and "--cache-write" in bad.stderr
    price_file = tmp_path / "prices.csv"
    price_file.write_text(
        "model,input_per_mtok,cached_input_per_mtok,output_per_mtok,effective_from,"
        f"cache_write_input_per_mtok\n{other},1,0.1,5,2026-01-01,1.25\n{other},2,0.2,6,2026-02-01,\n"
    )
    imported = ezq("import", str(price_file))
    assert imported.returncode == 0, imported.stderr

    listed = json.loads(ezq("list", "--model", model, "--format", "json").stdout)
    assert [p["cache_write_input_per_mtok"] for p in listed] == ["3.75"]
    rows = sql(
        "SELECT cache_write_input_per_mtok FROM model_prices"
        " WHERE model = :m ORDER BY effective_from",
        m=other,
    )
    assert [row[0] for row in rows] == [Decimal("1.25"), None]

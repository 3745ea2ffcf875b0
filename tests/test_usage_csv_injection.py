"""CSV output never hands a spreadsheet a formula, whatever tenants, models and tags hold."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from service.db.migrate import throwaway_database
from service.db.session import get_engine, transaction
from service.usage.render import csv_cell
from service.usage.synthetic import SeedPlan, seed_usage
from tests.conftest import ADMIN_DSN, run_ezq

DANGEROUS = ("=", "+", "-", "@", "\t", "\r")


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """Usage whose tenants, models and tags start with formula characters."""
    plans = [
        SeedPlan(rows=40, days=5, tenants=2, models=("+plus",), unpriced_models=(),
                 tenant_prefix='=HYPERLINK("http://evil")', stuck_jobs=0),
        SeedPlan(rows=40, days=5, tenants=2, models=("@at",), unpriced_models=(),
                 tenant_prefix="-2+3", stuck_jobs=0),
    ]  # fmt: skip
    with throwaway_database(ADMIN_DSN, prefix="ezq_test_csv") as url:
        with transaction(url) as session:
            for plan in plans:
                seed_usage(session, plan)
            session.execute(text('UPDATE token_usage SET metadata = \'{"feature": "=cmd|calc"}\''))
        yield url
        get_engine(url).dispose()


@pytest.mark.parametrize("by", ["tenant,model", "tag:feature", "day,tenant"])
def test_usage_csv_neutralises_formula_cells(database: str, by: str) -> None:
    """`ezq usage --format csv` prefixes cells starting with = + - @ with a quote."""
    done = run_ezq(
        "usage", "--since", "30d", "--by", by, "--format", "csv", env={"DATABASE_URL": database}
    )
    assert done.returncode == 0, done.stderr
    rows = list(csv.reader(io.StringIO(done.stdout)))
    cells = [cell for row in rows for cell in row]
    assert len(rows) > 1
    assert not [cell for cell in cells if cell.startswith(DANGEROUS)]
    quoted = {cell for cell in cells if cell.startswith("'")}
    if "tenant" in by:
        assert '\'=HYPERLINK("http://evil")-000' in quoted
        assert "'-2+3-001" in quoted
    if "model" in by:
        assert {"'+plus", "'@at"} <= quoted
    if "tag" in by:
        assert quoted == {"'=cmd|calc"}


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ("=1+1", "'=1+1"),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("acme", "acme"),
        ("", ""),
        (42, 42),
        (None, None),
    ],
)
def test_csv_cell_table(value: object, cell: object) -> None:
    """Only text that starts with a formula character is changed, by a leading quote."""
    assert csv_cell(value) == cell


def test_jobs_list_csv_neutralises_formula_cells(database: str) -> None:
    """`ezq jobs list --format csv` quotes tenants, models and metadata like `ezq usage`."""
    done = run_ezq(
        "jobs", "list", "--limit", "200", "--format", "csv", env={"DATABASE_URL": database}
    )
    assert done.returncode == 0, done.stderr
    rows = list(csv.reader(io.StringIO(done.stdout)))
    assert len(rows) > 1
    cells = [cell for row in rows for cell in row]
    assert not [cell for cell in cells if cell.startswith(DANGEROUS)]
    tenants = {row[rows[0].index("tenant")] for row in rows[1:]}
    models = {row[rows[0].index("model")] for row in rows[1:]}
    assert any(t.startswith('\'=HYPERLINK("http://evil")') for t in tenants), tenants
    assert any(t.startswith("'-2+3") for t in tenants), tenants
    assert models & {"'+plus", "'@at"}, models

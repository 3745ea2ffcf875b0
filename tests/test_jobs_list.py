"""``ezq jobs list``: every filter, the three formats, and a table that fits 80 columns."""

from __future__ import annotations

import csv
import io
import json
import uuid

import pytest

from tests.conftest import run_ezq
from tests.seeding import seed_job


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def listed(*args: str) -> list[dict[str, object]]:
    done = run_ezq("jobs", "list", "--format", "json", *args)
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, object]] = json.loads(done.stdout)
    return rows


def test_filters_select_exactly_the_matching_jobs(service_env: dict[str, str], tenant: str) -> None:
    """Status, model, error type, metadata and time filters combine with AND."""
    failed = seed_job(
        status="failed",
        error_type="server_error",
        tenant=tenant,
        metadata={"feature": "chat", "n": 1},
    )
    timeout = seed_job(
        status="failed", error_type="timeout", tenant=tenant, model="deepseek-v4-pro"
    )
    ok = seed_job(status="succeeded", tenant=tenant, metadata={"feature": "search"})
    old = seed_job(status="failed", error_type="server_error", tenant=tenant, age_s=10 * 86400)

    def ids(*args: str) -> set[str]:
        return {str(r["job_id"]) for r in listed("--tenant", tenant, *args)}

    assert ids() == {str(failed), str(timeout), str(ok), str(old)}
    assert ids("--status", "failed") == {str(failed), str(timeout), str(old)}
    assert ids("--status", "failed", "--since", "7d") == {str(failed), str(timeout)}
    assert ids("--error-type", "server_error", "--since", "7d") == {str(failed)}
    assert ids("--model", "deepseek-v4-pro") == {str(timeout)}
    assert ids("--meta", "feature=chat") == {str(failed)}
    assert ids("--meta", "n=1") == {str(failed)}
    # Filters on one key are alternatives, on different keys all hold.
    assert ids("--meta", "feature=chat", "--meta", "feature=search") == {str(failed), str(ok)}
    assert ids("--meta", "feature=chat", "--meta", "n=1") == {str(failed)}
    assert ids("--meta", "feature=search", "--meta", "n=1") == set()
    assert ids("--meta", "n=NaN") == set()  # not JSON Postgres holds: text only, no traceback
    assert ids("--meta", "n=1e400") == set()
    assert ids("--until", "2d") == {str(old)}
    assert ids("--status", "succeeded", "--status", "cancelled") == {str(ok)}
    assert len(listed("--tenant", tenant, "--limit", "2")) == 2


def test_json_and_csv_carry_the_same_rows(service_env: dict[str, str], tenant: str) -> None:
    """CSV has a header and one line per job with the same values as JSON."""
    job_id = seed_job(status="failed", error_type="timeout", tenant=tenant, metadata={"a": "b"})
    rows = listed("--tenant", tenant)
    assert rows[0]["job_id"] == str(job_id)
    assert rows[0]["status"] == "failed" and rows[0]["error_type"] == "timeout"
    assert rows[0]["metadata"] == {"a": "b"} and rows[0]["replay_of"] is None

    done = run_ezq("jobs", "list", "--tenant", tenant, "--format", "csv")
    parsed = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [r["job_id"] for r in parsed] == [str(job_id)]
    assert parsed[0]["error_type"] == "timeout" and parsed[0]["tenant"] == tenant
    assert json.loads(parsed[0]["metadata"]) == {"a": "b"}


def test_table_fits_80_columns_without_wrapping_ids(
    service_env: dict[str, str], tenant: str
) -> None:
    """Piped, the table is at most 80 columns wide and every job id is whole on its line."""
    long_model = "a-model-name-that-is-much-longer-than-the-table-has-room-for-2026"
    ids = [
        seed_job(status="failed", error_type="server_error", tenant=tenant, model=long_model)
        for _ in range(3)
    ]
    done = run_ezq("jobs", "list", "--tenant", tenant, env={"COLUMNS": "80"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines and max(len(line) for line in lines) <= 80
    for job_id in ids:
        assert any(str(job_id) in line for line in lines)
    assert "Traceback" not in done.stderr


def test_no_match_and_bad_filters(service_env: dict[str, str], tenant: str) -> None:
    """No match prints a note and exits 0; a bad filter is one line naming the option."""
    done = run_ezq("jobs", "list", "--tenant", tenant)
    assert done.returncode == 0 and done.stdout == "" and "no jobs match" in done.stderr

    for args, option in (
        (["--since", "yesterday"], "--since"),
        (["--meta", "novalue"], "--meta"),
        (["--status", "stuck"], "--status"),
        (["--since", "1d", "--until", "3d"], "--until"),
    ):
        done = run_ezq("jobs", "list", *args)
        assert done.returncode != 0
        assert option in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) <= 4  # click: usage, hint, error

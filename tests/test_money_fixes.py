"""Money and metrics fixes: the replay estimate prices cache writes as usage rows are
priced, recompute applies only the price in effect when a row was written, the usage report
shows cache writes, no ``*_created`` series, and gauges of known pairs read 0."""

from __future__ import annotations

import csv
import io
import json
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.core import Metric
from sqlalchemy import text

from service import enqueue_completion
from service.db.joblist import JobFilter
from service.db.session import transaction
from service.metrics.backlog import BacklogCollector
from service.ops.replay import replay_jobs
from service.usage.costs import insert_priced_usage
from service.usage.prices import PriceInput, add_price
from tests.conftest import WorkerProcess, free_port, run_ezq, sql, wait_for_job
from tests.seeding import seed_cheap_usage, seed_job
from tests.test_api import api  # noqa: F401  (the running `ezq api` fixture)

MODEL = "glm-5.1"


def model_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def write_usage(
    job_id: uuid.UUID,
    *,
    uncached: int,
    cached: int = 0,
    completion: int,
    cache_writes: int = 0,
    tenant: str | None = None,
) -> Decimal | None:
    """A usage row for ``job_id`` written (and priced) as the worker writes it."""
    [(conversation_id, model)] = sql(
        "SELECT conversation_id, model FROM jobs WHERE id = :i", i=job_id
    )
    prompt = uncached + cached
    with transaction() as session:
        return insert_priced_usage(
            session,
            job_id=job_id,
            conversation_id=conversation_id,
            model=model,
            tenant=tenant,
            prompt_tokens=prompt,
            cached_tokens=cached,
            uncached_prompt_tokens=uncached,
            completion_tokens=completion,
            reasoning_tokens=None,
            total_tokens=prompt + completion,
            cache_write_tokens=cache_writes,
            raw_usage={"seeded": True},
            usage_issues=None,
        )


def execute(query: str, *, database: str | None = None, **params: Any) -> None:
    """Run a statement against the test database (or ``database``) and commit it."""
    with transaction(database) as session:
        session.execute(text(query), params)


# 1. The replay estimate prices cache writes.


@pytest.mark.usefixtures("service_env")
def test_replay_estimate_prices_cache_writes_as_the_usage_row_is() -> None:
    """A job with 1470 cache-write tokens, 17 other input tokens and 6 output tokens, at
    3 / 0.30 / 15 and 3.75 for cache writes, is estimated at its actual cost, $0.0056535
    (not $0.004551, cache writes billed as plain input)."""
    model = model_name("replay-cw")
    with transaction() as session:
        add_price(
            session,
            PriceInput(
                model,
                Decimal(3),
                Decimal("0.30"),
                Decimal(15),
                datetime.now(UTC) - timedelta(days=1),
                cache_write_input_per_mtok=Decimal("3.75"),
            ),
        )
    job = seed_job("cached prompt", model=model, status="failed", error_type="server_error")
    actual = write_usage(job, uncached=1487, completion=6, cache_writes=1470)
    assert actual == Decimal("0.0056535")

    result = replay_jobs(JobFilter(job_ids=(job,)), limit=10, dry_run=True)
    assert [r.original_id for r in result.replays] == [job]
    assert (result.measured_jobs, result.unpriced_jobs) == (1, 0)
    assert result.estimated_cost_usd == actual

    done = run_ezq("jobs", "replay", str(job), "--dry-run", "--format", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["estimated_cost_usd"] == "0.0056535"

    # A job without usage is guessed (4000 characters: 1000 input tokens at $3, and the
    # model's mean completion, 6 tokens at $15), priced by the same function; a job of a
    # model without a price is counted unpriced.
    guessed = seed_job("x" * 4000, model=model, status="failed", error_type="server_error")
    other = seed_job("y", model=model_name("replay-u"), status="failed", error_type="timeout")
    result = replay_jobs(JobFilter(job_ids=(job, guessed, other)), limit=10, dry_run=True)
    assert len(result.replays) == 3
    assert (result.measured_jobs, result.unpriced_jobs) == (1, 1)
    assert result.estimated_cost_usd == actual + Decimal("0.00309")


# 2. Recompute applies only the price in effect when a row was written.


def _row(job_id: uuid.UUID) -> tuple[Any, ...]:
    [row] = sql("SELECT cost_usd, price_id FROM token_usage WHERE job_id = :i", i=job_id)
    return row


@pytest.mark.usefixtures("service_env")
def test_recompute_never_applies_a_price_not_yet_in_effect(tmp_path: Path) -> None:
    """A price imported for a future date gives today's unpriced usage no price; a price
    from before the row (set later) prices it, at that price."""
    model = model_name("kimi")
    job = seed_job("today", model=model, status="succeeded")
    assert write_usage(job, uncached=1000, cached=200, completion=100) is None
    today = datetime.now(UTC).date()
    future = today + timedelta(days=10)
    prices = tmp_path / "prices.csv"
    prices.write_text(
        "model,input_per_mtok,cached_input_per_mtok,output_per_mtok,effective_from\n"
        f"{model},0.6,0.06,2.5,{future}\n"
    )
    done = run_ezq("prices", "import", str(prices))
    assert done.returncode == 0, done.stderr

    done = run_ezq("prices", "recompute", "--since", str(today), "--model", model)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "priced 0 usage rows"
    assert "1 rows still unpriced" in done.stderr
    assert _row(job) == (None, None)

    yesterday = today - timedelta(days=1)
    done = run_ezq(
        "prices", "set", model, "--input", "2", "--cached-input", "0.5", "--output", "8",
        "--from", str(yesterday),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    done = run_ezq("prices", "recompute", "--since", str(today), "--model", model)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "priced 1 usage rows"
    [(backdated,)] = sql(
        "SELECT id FROM model_prices WHERE model = :m AND effective_from < now()", m=model
    )
    assert _row(job) == (Decimal("0.0029"), backdated)  # (1000*2 + 200*0.5 + 100*8) / 1e6


# 3. The usage report shows cache writes.


@pytest.mark.usefixtures("service_env")
def test_usage_report_shows_cache_write_tokens() -> None:
    """``ezq usage`` has cache_write_tokens in JSON (rows and totals), CSV (a column after
    the others) and the table (beside the uncached prompt tokens)."""
    tenant = f"cw-{uuid.uuid4().hex[:8]}"
    model = model_name("cw-report")
    for writes in (1470, 30):
        job = seed_job("cw", model=model, status="succeeded", tenant=tenant)
        write_usage(job, uncached=writes + 17, completion=6, cache_writes=writes, tenant=tenant)
    args = ("usage", "--since", "1d", "--tenant", tenant, "--by", "model")

    done = run_ezq(*args, "--format", "json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["totals"]["cache_write_tokens"] == 1500
    assert [row["cache_write_tokens"] for row in report["rows"]] == [1500]

    done = run_ezq(*args, "--format", "csv")
    assert done.returncode == 0, done.stderr
    [record] = list(csv.DictReader(io.StringIO(done.stdout)))
    assert record["cache_write_tokens"] == "1500"
    assert list(record)[-1] == "cache_write_tokens", "a new column goes last"

    done = run_ezq(*args)
    assert done.returncode == 0, done.stderr
    lines = [
        [c.strip() for c in re.split(r"[│┃|]", line)][1:-1] for line in done.stdout.splitlines()
    ]
    header = next(cells for cells in lines if "Uncached" in cells)
    total = next(cells for cells in lines if cells and cells[0] == "Total")
    at = header.index("Cache writes")
    assert header[at - 1] == "Uncached"
    assert total[at] == "1,500"


# 4. No ``*_created`` series.

_CREATED = re.compile(r"^ezq_\w+_created[{ ]", re.MULTILINE)


def test_worker_exports_no_created_series(
    worker_factory: Callable[..., WorkerProcess], own_queue: str, fake_gateway: Any
) -> None:
    """After a job, the worker's counters and histograms have no ``*_created`` samples."""
    port = free_port()
    worker_factory(env={"EZQ_QUEUE": own_queue}, args=["--metrics-port", str(port)])
    job = enqueue_completion(MODEL, [{"role": "user", "content": "hi"}], tenant="created")
    assert wait_for_job(job)["status"] == "succeeded"
    page = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert "ezq_jobs_total{" in page and "ezq_job_duration_seconds_bucket{" in page
    assert _CREATED.findall(page) == []


def test_api_exports_no_created_series(api: httpx.Client) -> None:  # noqa: F811
    """``ezq api``'s /metrics has no ``*_created`` samples either."""
    admin = {"Authorization": api.headers["Authorization"]}  # the API's admin token
    page = httpx.get(f"{str(api.base_url).rstrip('/')}/metrics", timeout=10, headers=admin).text
    assert "ezq_claims_undone_total" in page
    assert _CREATED.findall(page) == []


# 5. Gauges of known pairs read 0.

_COUNT_GAUGES = ("ezq_queue_depth", "ezq_jobs_in_flight", "ezq_jobs_retrying", "ezq_jobs_throttled")


def gauges(collector: BacklogCollector) -> dict[str, dict[tuple[str, ...], float]]:
    families: list[Metric] = list(collector.collect())
    return {
        family.name: {tuple(s.labels.values()): s.value for s in family.samples}
        for family in families
    }


def test_gauges_of_known_pairs_read_zero(own_database_settings: tuple[str, Any]) -> None:
    """On a fresh database the count gauges have no series; a pair with jobs reads 0 once
    they are gone; a fresh process knows the pairs with usage today and reads 0 for them."""
    url, _ = own_database_settings
    first = BacklogCollector(ttl_seconds=0)
    fresh = gauges(first)
    assert fresh["ezq_metrics_database_up"] == {(): 1.0}
    assert all(fresh[name] == {} for name in _COUNT_GAUGES)

    tenant = f"g-{uuid.uuid4().hex[:8]}"
    job = seed_job(tenant=tenant, status="queued")
    busy = gauges(first)
    assert busy["ezq_queue_depth"] == {(tenant, MODEL): 1.0}
    assert busy["ezq_jobs_in_flight"] == {(tenant, MODEL): 0.0}

    execute("UPDATE jobs SET status = 'cancelled' WHERE id = :i", i=job, database=url)
    idle = gauges(first)
    for name in _COUNT_GAUGES:
        assert idle[name] == {(tenant, MODEL): 0.0}, name
    assert idle["ezq_oldest_queued_job_age_seconds"] == {}, "absent when nothing is queued"

    used = seed_cheap_usage(Decimal("0.01"), model="alpha", url=url)
    restarted = gauges(BacklogCollector(ttl_seconds=0))
    for name in _COUNT_GAUGES:
        assert restarted[name] == {(used, "alpha"): 0.0}, name

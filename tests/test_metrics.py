"""Prometheus metrics after real jobs: names, labels and values that match the database."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service import enqueue_completion
from service.fake_gateway import Fault
from service.metrics.labels import NO_TENANT, OTHER, TenantLabels
from tests.conftest import WorkerProcess, free_port, sql, sweep_paused, wait_for_job
from tests.seeding import seed_job
from tests.test_api import api  # noqa: F401  (the running `ezq api` fixture)

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "docs" / "grafana" / "ezq-dashboard.json"
MODEL = "glm-5.1"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str, headers: dict[str, str] | None = None) -> tuple[set[str], Samples]:
    """Family names and every sample of a /metrics page (``ezq api``'s needs the admin
    token in ``headers``)."""
    text = httpx.get(url, timeout=10, headers=headers).text
    names: set[str] = set()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        for sample in family.samples:
            names.add(sample.name)
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return names, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def run_jobs(gateway: Any, tenant: str, succeed: int, fail: int) -> list[dict[str, Any]]:
    marker = uuid.uuid4().hex
    gateway.add_faults(Fault(status=400, match=marker, times=fail)) if fail else None
    ids = [
        enqueue_completion(MODEL, [{"role": "user", "content": f"ok {i}"}], tenant=tenant)
        for i in range(succeed)
    ] + [
        enqueue_completion(MODEL, [{"role": "user", "content": f"{marker} {i}"}], tenant=tenant)
        for i in range(fail)
    ]
    return [wait_for_job(job_id) for job_id in ids]


def test_worker_metrics_match_the_database(
    worker_factory: Callable[..., WorkerProcess], own_queue: str, fake_gateway: Any
) -> None:
    """Job, attempt, token and cost counters and the Postgres gauges equal what SQL says."""
    port = free_port()
    worker_factory(env={"EZQ_QUEUE": own_queue}, args=["--metrics-port", str(port)])
    tenant, waiting = f"t-{uuid.uuid4().hex[:8]}", f"w-{uuid.uuid4().hex[:8]}"
    jobs = run_jobs(fake_gateway, tenant, succeed=2, fail=1)
    assert sorted(j["status"] for j in jobs) == ["failed", "succeeded", "succeeded"]
    # The waiting jobs have no message: the suite's worker, which sweeps this database
    # every second, would publish and run them before the scrape.
    with sweep_paused():
        for _ in range(2):
            seed_job(tenant=waiting, status="queued", age_s=30)
        names, samples = scrape(f"http://127.0.0.1:{port}/metrics")

        assert value(samples, "ezq_jobs_total", status="succeeded", model=MODEL, tenant=tenant) == 2
        assert value(samples, "ezq_jobs_total", status="failed", model=MODEL, tenant=tenant) == 1
        attempts = "ezq_gateway_attempts_total"
        assert value(samples, attempts, outcome="success", error_type="none", model=MODEL) == 2
        assert (
            value(samples, attempts, outcome="failure", error_type="client_error", model=MODEL) == 1
        )
        [(prompt, completion, cached, cost)] = sql(
            "SELECT sum(prompt_tokens), sum(completion_tokens), sum(cached_tokens),"
            " coalesce(sum(cost_usd), 0) FROM token_usage WHERE tenant = :t",
            t=tenant,
        )
        tokens = "ezq_tokens_total"
        assert value(samples, tokens, model=MODEL, tenant=tenant, kind="prompt") == prompt > 0
        assert value(samples, tokens, model=MODEL, tenant=tenant, kind="completion") == completion
        assert value(samples, tokens, model=MODEL, tenant=tenant, kind="cached") == cached
        assert Decimal(str(value(samples, "ezq_cost_usd_total", model=MODEL, tenant=tenant))) == (
            pytest.approx(cost)
        )
        durations = "ezq_job_duration_seconds_count"
        assert value(samples, durations, model=MODEL, status="succeeded") == 2
        assert value(samples, "ezq_time_to_first_token_seconds_count", model=MODEL) == 2

        assert value(samples, "ezq_queue_depth", tenant=waiting, model=MODEL) == 2
        [(age,)] = sql(
            "SELECT extract(epoch FROM now() - min(created_at)) FROM jobs"
            " WHERE tenant = :t AND status = 'queued'",
            t=waiting,
        )
        oldest = value(samples, "ezq_oldest_queued_job_age_seconds", tenant=waiting, model=MODEL)
        assert 30 <= oldest <= float(age) + 1
        [(pending,)] = sql("SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'")
        assert value(samples, "ezq_webhook_backlog") == pending
        assert value(samples, "ezq_metrics_database_up") == 1
        assert {"ezq_jobs_in_flight", "ezq_jobs_retrying", "ezq_jobs_throttled"} <= names
        assert "ezq_webhook_deliveries" in names or "ezq_webhook_deliveries_total" in names


def test_jobs_failed_at_claim_or_on_a_paid_reply_are_counted(
    worker_factory: Callable[..., WorkerProcess], own_queue: str, fake_gateway: Any
) -> None:
    """A job failed over budget before any call, and one failed on a reply it paid for (a
    strict json_schema mismatch), are in the job counters like any failed job, and the
    paid one's tokens in the token counter, as in token_usage."""
    from tests.conftest import run_ezq

    port = free_port()
    # The model has no price here: a budget then holds it back only with `deny`.
    env = {"EZQ_QUEUE": own_queue, "EZQ_BUDGET_UNPRICED": "deny"}
    worker_factory(env=env, args=["--metrics-port", str(port)])
    broke, strict = f"b-{uuid.uuid4().hex[:8]}", f"s-{uuid.uuid4().hex[:8]}"
    done = run_ezq("budgets", "set", "--tenant", broke, "--monthly-usd", "0", "--model", MODEL)
    assert done.returncode == 0, done.stderr
    over = enqueue_completion(MODEL, [{"role": "user", "content": "over"}], tenant=broke)
    marker = uuid.uuid4().hex
    fake_gateway.add_faults(Fault(kind="normal", reply="not json", match=marker))
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    params = {
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "a", "strict": True, "schema": schema},
        }
    }
    mismatch = enqueue_completion(
        MODEL, [{"role": "user", "content": f"json {marker}"}], params=params, tenant=strict
    )
    assert wait_for_job(over)["error"]["type"] == "budget_exceeded"
    assert wait_for_job(mismatch)["error"]["type"] == "json_schema_mismatch"

    _, samples = scrape(f"http://127.0.0.1:{port}/metrics")
    for tenant in (broke, strict):
        assert value(samples, "ezq_jobs_total", status="failed", model=MODEL, tenant=tenant) == 1
    [(prompt, completion)] = sql(
        "SELECT sum(prompt_tokens), sum(completion_tokens) FROM token_usage WHERE tenant = :t",
        t=strict,
    )
    tokens = "ezq_tokens_total"
    assert value(samples, tokens, model=MODEL, tenant=strict, kind="prompt") == prompt > 0
    assert value(samples, tokens, model=MODEL, tenant=strict, kind="completion") == completion


def test_a_call_paid_after_its_job_was_cancelled_is_counted(
    worker_factory: Callable[..., WorkerProcess], own_queue: str, fake_gateway: Any
) -> None:
    """A call that finishes after its job was cancelled was paid for: its usage row is in
    token_usage (job_cancelled), and in the call, token and cost counters alike, so that
    Grafana's spend is SQL's."""
    from service.producer import cancel_job, get_job
    from tests.test_faults import wait_until

    port = free_port()
    worker_factory(env={"EZQ_QUEUE": own_queue}, args=["--metrics-port", str(port)])
    # The cost counter is checked against SQL's, whatever the model's price (none: 0).
    model, tenant = MODEL, f"c-{uuid.uuid4().hex[:8]}"
    marker = uuid.uuid4().hex
    # A reply streamed over about 2 s, each chunk well within the read timeout.
    reply = " ".join(f"w{i}" for i in range(8))
    fake_gateway.add_faults(Fault(kind="normal", reply=reply, chunk_delay=0.25, match=marker))
    job_id = enqueue_completion(model, [{"role": "user", "content": marker}], tenant=tenant)
    wait_until(lambda: get_job(job_id)["status"] == "running", "the call under way")
    assert cancel_job(job_id)["status"] == "cancelled"
    usage = (
        f"SELECT coalesce(cost_usd, 0) FROM token_usage WHERE job_id = '{job_id}' AND job_cancelled"
    )
    wait_until(lambda: bool(sql(usage)), "the cancelled call's usage row")
    [(cost,)] = sql(usage)

    url = f"http://127.0.0.1:{port}/metrics"
    # The tenant's series are this job's alone; the model's may also count a job of
    # another test that this worker (one pool with the suite's) happened to run.
    tokens = "ezq_tokens_total"
    wait_until(
        lambda: value(scrape(url)[1], tokens, model=model, tenant=tenant, kind="prompt") > 0,
        "the call's tokens counted",
    )
    _, samples = scrape(url)
    counted = Decimal(str(value(samples, "ezq_cost_usd_total", model=model, tenant=tenant)))
    assert counted == pytest.approx(cost)
    [(prompt, completion)] = sql(
        "SELECT prompt_tokens, completion_tokens FROM token_usage WHERE job_id = :j", j=job_id
    )
    assert value(samples, tokens, model=model, tenant=tenant, kind="prompt") == prompt > 0
    assert value(samples, tokens, model=model, tenant=tenant, kind="completion") == completion
    attempts = "ezq_gateway_attempts_total"
    assert value(samples, attempts, outcome="success", error_type="none", model=model) >= 1
    calls = "ezq_gateway_call_duration_seconds_count"
    assert value(samples, calls, model=model, outcome="success") >= 1


def test_worker_processes_add_up(
    worker_factory: Callable[..., WorkerProcess],
    own_queue: str,
    fake_gateway: Any,
    tmp_path: Path,
) -> None:
    """With PROMETHEUS_MULTIPROC_DIR shared, one endpoint counts the jobs of every process."""
    port = free_port()
    folder = tmp_path / "prometheus"
    folder.mkdir()
    env = {"EZQ_QUEUE": own_queue, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    worker_factory(env=env, args=["--metrics-port", str(port), "--concurrency", "1"])
    worker_factory(env=env, args=["--concurrency", "1", "-n", f"second-{own_queue}@%h"])
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    # Slow replies, so that both processes take jobs.
    fake_gateway.add_faults(Fault(kind="normal", latency=1.0, match="ok ", times=4))
    run_jobs(fake_gateway, tenant, succeed=4, fail=0)

    _, samples = scrape(f"http://127.0.0.1:{port}/metrics")
    assert value(samples, "ezq_jobs_total", status="succeeded", model=MODEL, tenant=tenant) == 4
    assert len(list(folder.glob("counter_*.db"))) >= 2, "both processes wrote counters"


def test_tenant_labels_are_capped() -> None:
    """Past the cap, or outside the allow-list, tenants are counted as other; none is none."""
    capped = TenantLabels(cap=2)
    assert [capped(t) for t in ("a", "b", "c", "a", None)] == ["a", "b", OTHER, "a", NO_TENANT]
    listed = TenantLabels(allowed=("vip",), cap=2)
    assert [listed("vip"), listed("a"), listed("")] == ["vip", OTHER, NO_TENANT]


def test_model_labels_are_capped(
    worker_factory: Callable[..., WorkerProcess], own_queue: str, fake_gateway: Any
) -> None:
    """A model is free text in a request: past EZQ_METRICS_MAX_MODELS made-up models add no
    series of their own, they count as other."""
    port = free_port()
    env = {"EZQ_QUEUE": own_queue, "EZQ_METRICS_MAX_MODELS": "1"}
    worker_factory(env=env, args=["--metrics-port", str(port)])
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    first = wait_for_job(
        enqueue_completion(MODEL, [{"role": "user", "content": "a"}], tenant=tenant)
    )
    made_up = [f"no-such-model-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    others = [
        wait_for_job(enqueue_completion(m, [{"role": "user", "content": "b"}], tenant=tenant))
        for m in made_up
    ]
    assert first["status"] == "succeeded" and {j["status"] for j in others} == {"failed"}

    _, samples = scrape(f"http://127.0.0.1:{port}/metrics")
    assert value(samples, "ezq_jobs_total", status="succeeded", model=MODEL, tenant=tenant) == 1
    assert value(samples, "ezq_jobs_total", status="failed", model=OTHER, tenant=tenant) == 3
    attempts = "ezq_gateway_attempts_total"
    assert value(samples, attempts, outcome="failure", error_type="client_error", model=OTHER) == 3
    assert [key for key in samples if {v for _, v in key[1]} & set(made_up)] == []


def dashboard_metrics() -> set[str]:
    """Every ezq_* series named in the Grafana dashboard's queries."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert exprs, "the dashboard has queries"
    return {name for expr in exprs for name in re.findall(r"\bezq_[a-z_]+", expr)}


def test_every_dashboard_metric_exists(
    worker_factory: Callable[..., WorkerProcess], own_queue: str, fake_gateway: Any
) -> None:
    """Each metric the Grafana dashboard queries is served once jobs have run."""
    port = free_port()
    worker_factory(env={"EZQ_QUEUE": own_queue}, args=["--metrics-port", str(port)])
    run_jobs(fake_gateway, f"t-{uuid.uuid4().hex[:8]}", succeed=1, fail=1)
    names, _ = scrape(f"http://127.0.0.1:{port}/metrics")
    # A counter's family is "x" and its samples "x_total"; histograms add _bucket/_sum/_count.
    missing = {
        name
        for name in dashboard_metrics()
        if name not in names and name.removesuffix("_total") not in names
    }
    assert not missing, f"the dashboard uses metrics nobody serves: {sorted(missing)}"


def test_api_serves_metrics(api: httpx.Client) -> None:  # noqa: F811
    """`ezq api` answers GET /metrics to an admin token, with the Postgres gauges."""
    base = str(api.base_url).rstrip("/")
    waiting = f"w-{uuid.uuid4().hex[:8]}"
    seed_job(tenant=waiting, status="queued")
    admin = {"Authorization": api.headers["Authorization"]}
    names, samples = scrape(f"{base}/metrics", headers=admin)
    assert {"ezq_queue_depth", "ezq_oldest_queued_job_age_seconds", "ezq_webhook_backlog"} <= names
    assert value(samples, "ezq_queue_depth", tenant=waiting, model=MODEL) == 1

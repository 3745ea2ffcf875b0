"""The counters and histograms, defined once per process.

Without their ``*_created`` samples: prometheus_client would add one gauge per series (the
time it was first counted), undocumented and doubling the series count. Turned off here,
where the metrics are defined, and again where the registry is set up
(``service.metrics.exposition``), for the worker and ``ezq api`` alike.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram, disable_created_metrics

disable_created_metrics()  # type: ignore[no-untyped-call]

JOBS = Counter(
    "ezq_jobs_total",
    "Jobs that ended, by final status (succeeded, failed, cancelled).",
    ["status", "model", "tenant"],
)
GATEWAY_ATTEMPTS = Counter(
    "ezq_gateway_attempts_total",
    "Gateway calls by outcome (success, retry, failure) and error type (none on success).",
    ["outcome", "error_type", "model"],
)
JOB_DURATION = Histogram(
    "ezq_job_duration_seconds",
    "From enqueue to the end of a job, by final status (gen_ai.client.operation.duration"
    " measures one call; this includes queueing and retries).",
    ["model", "status"],
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600),
)
TIME_TO_FIRST_TOKEN = Histogram(
    "ezq_time_to_first_token_seconds",
    "From the start of a successful gateway call to its first streamed token.",
    ["model"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 60),
)
GATEWAY_DURATION = Histogram(
    "ezq_gateway_call_duration_seconds",
    "One gateway call, start to end of the stream or error (gen_ai.client.operation.duration).",
    ["model", "outcome"],
    buckets=(0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
)
TOKENS = Counter(
    "ezq_tokens_total",
    "Tokens of succeeded jobs by kind: prompt (cached included), cached, completion"
    " (gen_ai.client.token.usage).",
    ["model", "tenant", "kind"],
)
COST = Counter(
    "ezq_cost_usd_total",
    "Cost in USD of succeeded jobs, as written to token_usage.cost_usd (unpriced: 0).",
    ["model", "tenant"],
)
DEAD_LETTERS = Counter(
    "ezq_dead_letters_total",
    "Broker messages no worker could run, kept in dead_letters, by kind (not_json,"
    " bad_envelope, undecodable_body, not_a_task, unknown_task, invalid_task,"
    " invalid_arguments).",
    ["kind"],
)
ATTEMPTS_LOST = Counter(
    "ezq_attempts_lost_total",
    "Running attempts the sweep took over: worker_lost (the worker stopped beating) or"
    " lease_expired (it beats but gave the job up).",
    ["error_type", "model"],
)
CLAIMS_UNDONE = Counter(
    "ezq_claims_undone_total",
    "Claims a worker undid because Postgres's answer was lost with the connection: the"
    " job pending again as before, no attempt counted.",
)
WEBHOOK_DELIVERIES = Counter(
    "ezq_webhook_deliveries_total",
    "Webhook delivery attempts by outcome (delivered, retrying, failed, skipped).",
    ["outcome"],
)

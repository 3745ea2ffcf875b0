"""Named defaults, with their units, for everything tunable in ezq."""

from __future__ import annotations

from typing import Final

# Task names are a public contract: other services' Celery apps send these by name.
TASK_CHAT_COMPLETION: Final = "ezq.chat_completion"
TASK_DELIVER_WEBHOOK: Final = "ezq.deliver_webhook"
TASK_SWEEP: Final = "ezq.sweep"
DEFAULT_QUEUE: Final = "ezq"

DEFAULT_EZROUTER_BASE_URL: Final = "https://www.ezrouter.dev/v1"
DEFAULT_DATABASE_URL: Final = "postgresql+psycopg://postgres@127.0.0.1:5432/ezq"
DEFAULT_BROKER_URL: Final = "redis://127.0.0.1:6379/0"

# ezrouter's two surfaces; "auto" picks one per request (service/gateway/routing.py).
SURFACES: Final = ("openai", "anthropic", "auto")
DEFAULT_SURFACE: Final = "auto"
# The Anthropic Messages API requires max_tokens; this is sent when the request has none.
ANTHROPIC_DEFAULT_MAX_TOKENS: Final = 8192
# Thinking budget when thinking is on and the request names none (Anthropic's minimum is
# 1024); reasoning_effort picks from this table.
ANTHROPIC_THINKING_BUDGETS: Final = {
    "low": 2048,
    "medium": 4096,
    "high": 8192,
    "max": 16384,
    "xhigh": 16384,
}
ANTHROPIC_DEFAULT_THINKING_BUDGET: Final = 4096

# Gateway timeouts. ezrouter signals overload as latency, never as 429, so a stalled
# stream must be cut by us: a read timeout between chunks and a wall-clock deadline for
# the whole attempt (a trickling stream never trips the read timeout).
GATEWAY_CONNECT_TIMEOUT_S: Final = 10.0
GATEWAY_READ_TIMEOUT_S: Final = 60.0
GATEWAY_ATTEMPT_DEADLINE_S: Final = 600.0

# Retries of gateway calls (connection errors and 5xx only).
MAX_ATTEMPTS: Final = 5
RETRY_BACKOFF_BASE_S: Final = 2.0
RETRY_BACKOFF_MAX_S: Final = 300.0

# A claimed job is owned by its worker for a short lease that the worker's heartbeat renews
# while the attempt runs, so a job whose worker died is found in seconds, not after the
# attempt's deadline. The heartbeat beats several times per lease.
LEASE_S: Final = 30.0
HEARTBEAT_INTERVAL_S: Final = 5.0
# A heartbeat renews a job's lease for at most the attempt's own bounds plus this margin, so
# a thread stuck by a bug cannot hold a job forever.
LEASE_HOLD_MARGIN_S: Final = 60.0
# A worker settling its claims in doubt (service.worker.liveness) holds its new claims back
# while the claims under way end, for at most this long; then it tries again at its next
# beat.
SETTLE_CLAIMS_WAIT_S: Final = 1.0

# The Redis transport gives an unacknowledged message back after this long, so a message a
# dead worker had taken (a foreign job whose row it had not written yet) runs again within
# a minute. A live job's message that outlives it comes back as a duplicate, which the
# claim recognises and drops; countdowns are kept shorter than a third of it, longer waits
# are parked in the database for the sweep.
BROKER_VISIBILITY_TIMEOUT_S: Final = 45.0
BROKER_RESTORE_INTERVAL_S: Final = 5.0
# Publishing a message gives up after this long, so a broker outage never blocks a caller:
# the job is stored, and the sweep publishes it when the broker is back.
PUBLISH_TIMEOUT_S: Final = 2.0

# Celery's result backend keeps a task's return value this long (for ``AsyncResult.get()``);
# the database is the record, so the copy in Redis is short-lived.
RESULT_EXPIRES_S: Final = 3600.0

# Worker: gateway calls are I/O bound, so one process keeps many in flight on threads.
WORKER_CONCURRENCY: Final = 32
# How soon a message whose producer waits for its result comes back to look again when
# its job is run by another message, or waits for an earlier turn of its conversation.
OWN_RESULT_RECHECK_S: Final = 1.0
# The worker's garbage collector thresholds (``gc.set_threshold``; CPython's own are
# 700, 10, 10): a job's objects live as long as its gateway call, so with many calls in
# flight they outlive young collections and the oldest generation's full scans of the
# heap came every few seconds (service/worker/collector.py).
WORKER_GC_THRESHOLDS: Final = (50_000, 20, 100)
GC_THRESHOLD_MAX: Final = 2**31 - 1
# Connections opened when a process starts, and the most opened beyond them for a burst
# (kept once opened): a thousand calls that end together queue for these rather than open
# a thousand connections (Postgres refuses past max_connections, 100 by default).
DB_POOL_SIZE: Final = 20
DB_POOL_BURST: Final = 10
# Threads of an HTTP interface process that may each hold a connection at once: anyio's
# default thread pool, which runs FastAPI's routes written as plain functions and every
# ``run_in_threadpool`` call. Its pool is sized for these, not for a worker's threads.
API_THREADS: Final = 40
# Connections beyond the job threads' share for a worker's own threads: the sweep holds
# one for its advisory lock while its transactions take another (with none to spare, a
# worker of concurrency 1 waited for itself); the publisher of due throttled jobs and the
# metrics scrape share them with the job threads, each for a moment. The heartbeat has a
# connection of its own, outside the pool (``session.own_connection``).
DB_POOL_MAINTENANCE: Final = 2
# How long a thread waits for a pooled connection before the database counts as unavailable.
DB_POOL_TIMEOUT_S: Final = 30.0

# Request limits, checked at enqueue.
MAX_REQUEST_BYTES: Final = 1_000_000
MAX_MESSAGES: Final = 1_000
MAX_MODEL_LENGTH: Final = 200
MAX_TENANT_LENGTH: Final = 200
MAX_IDEMPOTENCY_KEY_LENGTH: Final = 255
MAX_METADATA_BYTES: Final = 16_000
# The HTTP body limit is this many times MAX_REQUEST_BYTES unless EZQ_API_MAX_BODY_BYTES says.
API_BODY_LIMIT_FACTOR: Final = 4

# Batches: input files as large as OpenAI accepts, stored and read in slices.
BATCH_MAX_FILE_BYTES: Final = 200 * 1024 * 1024
BATCH_MAX_LINES: Final = 50_000
BATCH_CHUNK_BYTES: Final = 1024 * 1024  # one batch_file_chunks row
BATCH_INSERT_LINES: Final = 1_000  # jobs inserted per statement, and published per call
BATCH_MAX_ERRORS: Final = 100  # line errors reported for a bad file (the first ones)
BATCH_COMPLETION_WINDOW: Final = "24h"
# Batch lines queue below interactive work (PRIORITY_DEFAULT) unless the batch says
# otherwise; aging (EZQ_PRIORITY_AGING) still lets them through a busy queue.
BATCH_PRIORITY_DEFAULT: Final = 1
BATCH_COMPLETION_WINDOW_S: Final = 24 * 3600.0
BATCH_ENDPOINT: Final = "/v1/chat/completions"
BATCH_FINALIZE_LIMIT: Final = 20  # batches the sweep finalises per run
BATCH_LIST_LIMIT: Final = 20  # GET /v1/batches default page (OpenAI's), at most 100

# Error text stored from the gateway is capped so a huge upstream body cannot bloat rows.
MAX_STORED_ERROR_CHARS: Final = 2_000

# The sweep runs in every worker process, one at a time across all of them (a row lock),
# about this often.
SWEEP_INTERVAL_S: Final = 10.0
# A pending job whose message was published this long ago and has not started is
# republished when the broker holds fewer messages than there are pending and running jobs
# (messages were lost: a flushed or restarted broker).
REDISPATCH_AFTER_S: Final = 30.0
# ... and after this long whatever the broker says: the safety net.
SWEEP_STALE_AFTER_S: Final = 600.0
SWEEP_BATCH: Final = 1000

# Webhooks. The retry schedule follows the Standard Webhooks recommendation: at once, then
# 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (eight attempts over about a day and a half).
WEBHOOK_TIMEOUT_S: Final = 15.0
WEBHOOK_RETRY_SCHEDULE_S: Final = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
WEBHOOK_MAX_ATTEMPTS: Final = 8
WEBHOOK_RETRY_JITTER: Final = 0.2  # each delay is scaled by a random factor in [0.8, 1.2]
WEBHOOK_RETRY_AFTER_MAX_S: Final = 36000.0  # a receiver's Retry-After is honoured up to this
WEBHOOK_MAX_RESPONSE_BYTES: Final = 4_096  # of the receiver's answer, read and kept as error
WEBHOOK_MAX_URL_LENGTH: Final = 2_048
# Threads of a worker process that make the first attempt of its jobs' webhooks.
WEBHOOK_LOCAL_THREADS: Final = 4
# How long a connection to a receiver stays open for the next attempt: shorter than the
# idle timeouts of common servers (gunicorn's 2 s is the shortest), so that a receiver
# does not close one just as it is reused.
WEBHOOK_KEEPALIVE_S: Final = 1.0
WEBHOOK_SECRET_MIN_BYTES: Final = 24  # Standard Webhooks: 24 to 64 random bytes
# A delivery's message runs this much early at most (clock skew between worker and database).
WEBHOOK_EARLY_S: Final = 1.0
# The sweep republishes a due delivery once its last message is this overdue.
WEBHOOK_SWEEP_GRACE_S: Final = 120.0
WEBHOOK_SWEEP_BATCH: Final = 500
# Batches of due deliveries a sweep publishes at most (each a transaction, then its
# messages): 10,000 a sweep, 1,000 a second at the default interval.
WEBHOOK_SWEEP_BATCHES: Final = 20
# A claimed delivery is owned for the attempt deadline plus this margin.
WEBHOOK_LEASE_MARGIN_S: Final = 30.0

# After a paid gateway call, recording its outcome is retried in-process for this long if
# the database is unreachable, with these pauses (the last one repeats).
RECORD_RETRY_FOR_S: Final = 300.0
RECORD_RETRY_PAUSES_S: Final = (0.2, 0.5, 1.0, 2.0)

# Metrics: at most this many tenants, and this many models (callers name both), get a label
# of their own per process (the rest count as "other"), and the Postgres gauges are reused
# for this long between scrapes.
METRICS_MAX_TENANTS: Final = 50
METRICS_MAX_MODELS: Final = 50
METRICS_DB_TTL_S: Final = 5.0

# --- flow control (service/flow) ---------------------------------------------------------
FLOW_WINDOW_S: Final = 60.0  # requests_per_window and tokens_per_window count over this
FLOW_RECHECK_S: Final = 5.0  # a throttled job checks again after this if nothing woke it
FLOW_DEFAULT_MAX_TOKENS: Final = 4096  # completion tokens reserved without max_tokens
PRIORITY_AGING_S: Final = 60.0  # a waiting job gains one priority step per this long
FLOW_CANDIDATES: Final = 8  # best-ranked jobs a claim considers running in a message's place
# After a short claim declined (another job pending, a limit or budget configured, the job
# throttled), the process's next claims rank for this long before trying it again
# (``service.flow.admission``).
SHORT_CLAIM_PAUSE_S: Final = 1.0
FLOW_WAKE: Final = 2  # throttled jobs a finished call wakes
FLOW_WAKE_ON_CHANGE: Final = 200  # throttled jobs a changed limit wakes
FLOW_ADMISSIONS_KEEP_S: Final = 3600.0  # settled admissions are kept this long, for SQL
PRIORITY_DEFAULT: Final = 5
PRIORITY_MIN: Final = 0
PRIORITY_MAX: Final = 9

# Live tokens (service/live): deltas a worker reads are batched for this long before one
# pipelined write to the job's Redis stream, which keeps at most this many entries (about
# ten minutes of a fast stream at one entry per interval) and expires this long after its
# last write. A listener with nothing new gets a keep-alive comment, and a look at
# Postgres for an end it missed, this often.
LIVE_FLUSH_INTERVAL_S: Final = 0.05
LIVE_STREAM_MAXLEN: Final = 10_000
LIVE_TTL_S: Final = 3600.0
LIVE_ENDED_TTL_S: Final = 60.0
LIVE_HEARTBEAT_S: Final = 15.0
# After a failed write the publisher skips Redis for this long (the stream read goes on).
LIVE_BACKOFF_S: Final = 5.0
LIVE_REDIS_TIMEOUT_S: Final = 1.0
# A live-token reader blocks in XREAD for up to EZQ_LIVE_HEARTBEAT; its socket waits that
# long plus this before it calls Redis unreachable (redis-py 8 times a read out after 5 s
# unless told otherwise, which cut every block short and left the reader blind).
LIVE_READ_MARGIN_S: Final = 5.0
# `ezq api` on SIGTERM: requests in flight get this long; open /events streams are then
# closed (their clients resume with Last-Event-ID).
API_GRACEFUL_SHUTDOWN_S: Final = 10.0

# What a task's arguments read as in task events and in remote control's answers
# (`celery inspect active`, `reserved`, `query_task`): a foreign producer's arguments hold
# its prompt.
ARGUMENTS_NOT_SHOWN = "[not shown]"

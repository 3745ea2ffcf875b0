"""SQLAlchemy models. Alembic migrations own the schema; these must match them exactly."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Computed,
    DateTime,
    FetchedValue,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    SmallInteger,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ROLES = ("system", "user", "assistant", "tool")
# What a request asks for, and which surface an attempt actually used.
REQUEST_SURFACES = ("openai", "anthropic", "auto")
ATTEMPT_SURFACES = ("openai", "anthropic")
JOB_STATUSES = ("queued", "running", "retrying", "succeeded", "failed", "cancelled")
TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")
# Money is exact: prices per million tokens to 1e-10 USD, and a cost keeps every digit of
# tokens x price / 1e6 (scale 10 + 6).
PRICE = Numeric(20, 10)
COST_USD = Numeric(32, 16)
# created_at too: the planner reads a column from an index only when the column itself,
# not just an expression over it, is in the index.
USAGE_INDEX_INCLUDE = (
    "created_at",
    "prompt_tokens",
    "cached_tokens",
    "uncached_prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_usd",
    "cache_write_tokens",
)
JOB_EVENT_TYPES = ("job.succeeded", "job.failed", "job.cancelled")
BATCH_EVENT_TYPES = ("batch.completed", "batch.failed", "batch.cancelled")
WEBHOOK_EVENT_TYPES = (*JOB_EVENT_TYPES, *BATCH_EVENT_TYPES)
# OpenAI's batch statuses, as its API spells them.
BATCH_STATUSES = (
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
)
BATCH_FILE_PURPOSES = ("batch", "batch_output")
WEBHOOK_STATUSES = ("pending", "delivered", "failed")


# A Python None in these columns means "absent": store SQL NULL, not the JSON value null,
# so that ``IS NULL`` in people's SQL means what it says.
NULLABLE_JSONB = JSONB(none_as_null=True)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: DateTime(timezone=True),
        dict[str, Any]: JSONB,
        uuid.UUID: UUID(as_uuid=True),
        str: Text,
    }


def _now() -> Any:
    return mapped_column(server_default=func.now())


class Conversation(Base):
    __tablename__ = "conversations"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    created_at: Mapped[datetime] = _now()
    tenant: Mapped[str | None]
    meta: Mapped[dict[str, Any]] = mapped_column(
        "metadata", server_default=text("'{}'::jsonb"), default=dict
    )

    __table_args__ = (Index(None, "tenant", "created_at"),)


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE")
    )
    seq: Mapped[int] = mapped_column(Integer)
    role: Mapped[str]
    # For a message sent as content parts, the text of its text parts joined by newlines
    # (so SQL reads it as text); the parts themselves, as sent, are in content_parts.
    content: Mapped[str | None]
    content_parts: Mapped[list[Any] | None] = mapped_column(NULLABLE_JSONB)
    name: Mapped[str | None]
    tool_calls: Mapped[list[Any] | None] = mapped_column(NULLABLE_JSONB)
    tool_call_id: Mapped[str | None]
    # An Anthropic-surface reply's thinking blocks with their signatures, sent back on the
    # next turn so that extended thinking continues across turns.
    thinking_blocks: Mapped[list[Any] | None] = mapped_column(NULLABLE_JSONB)
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = _now()
    # An assistant message's refusal and reasoning_content as the producer sent them.
    refusal: Mapped[str | None]
    reasoning_content: Mapped[str | None]

    __table_args__ = (
        CheckConstraint(_in("role", ROLES), name="role"),
        Index(None, "conversation_id", "seq", unique=True),
        Index(None, "job_id"),
    )


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    # Orders the jobs of one conversation: turns run one at a time in this order.
    enqueue_seq: Mapped[int] = mapped_column(BigInteger, Identity())
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE")
    )
    status: Mapped[str] = mapped_column(server_default="queued")
    model: Mapped[str]
    params: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    # The messages this job adds; they join the history together with the reply.
    input_messages: Mapped[list[Any]] = mapped_column(JSONB)
    tenant: Mapped[str | None]
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", server_default=text("'{}'::jsonb"))
    idempotency_key: Mapped[str | None]
    request_hash: Mapped[str]
    # Where the job's webhook goes when it ends (checked at enqueue; see service/webhooks).
    callback_url: Mapped[str | None]
    # Which ezrouter surface the job asked for (see service/gateway/routing.py).
    surface: Mapped[str] = mapped_column(server_default="auto")
    # Which key created the job over HTTP: an ``api_keys.id``, or ``env:N`` for the N-th
    # token of EZQ_API_TOKENS; NULL for jobs enqueued from Python, the CLI or Celery.
    created_by: Mapped[str | None]
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    error_type: Mapped[str | None]
    error_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None]
    finish_reason: Mapped[str | None]
    created_at: Mapped[datetime] = _now()
    started_at: Mapped[datetime | None]
    first_token_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    lease_expires_at: Mapped[datetime | None]
    # When the job's latest run message was published, or, for a retry, becomes due. The
    # sweep republishes a job only when this is long past: its message was lost.
    dispatched_at: Mapped[datetime] = mapped_column(server_default=func.now())
    # The worker (``workers.id``) whose heartbeat renews a running job's lease.
    lease_holder: Mapped[str | None]
    # No run message is on the broker for this pending job (the publish failed, a waiting
    # turn was parked, a backoff is longer than a countdown may be): the sweep publishes it.
    needs_publish: Mapped[bool] = mapped_column(server_default=text("false"))
    # The job this one replays (``ezq jobs replay``).
    replay_of: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    # When ``ezq purge`` deleted the job's content; usage and cost rows stay.
    purged_at: Mapped[datetime | None]
    # Flow control (service/flow): 0-9, higher runs first; a queued job held back by a
    # limit (or by a better-ranked job) says why and until when.
    priority: Mapped[int] = mapped_column(SmallInteger, server_default="5")
    throttled_until: Mapped[datetime | None]
    throttle_reason: Mapped[str | None]
    # The batch this job is a line of, and the line's ``custom_id`` (unique in the batch).
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id"))
    custom_id: Mapped[str | None]

    __table_args__ = (
        CheckConstraint(_in("status", JOB_STATUSES), name="status"),
        Index(
            "ix_jobs_running_lease",
            "lease_expires_at",
            postgresql_where=text("status = 'running'"),
        ),
        # Pending jobs by dispatch time, less those parked throttled (their own index,
        # below): a query that says only "pending" cannot use it (migration 0019).
        Index(
            "ix_jobs_pending_dispatch",
            "dispatched_at",
            postgresql_where=text(
                "status IN ('queued', 'retrying')"
                " AND (NOT needs_publish OR throttle_reason IS NULL)"
            ),
        ),
        CheckConstraint(_in("surface", REQUEST_SURFACES), name="surface"),
        CheckConstraint("attempts >= 0", name="attempts"),
        CheckConstraint("priority BETWEEN 0 AND 9", name="priority"),
        Index(
            "ix_jobs_pending_tenant_rank",
            func.coalesce(text("tenant"), text("''")),
            text("priority DESC"),
            "enqueue_seq",
            postgresql_where=text("status IN ('queued', 'retrying')"),
        ),
        Index(
            "ix_jobs_pending_tenant_seq",
            func.coalesce(text("tenant"), text("''")),
            "enqueue_seq",
            postgresql_where=text("status IN ('queued', 'retrying')"),
        ),
        Index(
            "ix_jobs_throttled",
            text("priority DESC"),
            "enqueue_seq",
            postgresql_where=text(
                "needs_publish AND throttle_reason IS NOT NULL AND status IN ('queued', 'retrying')"
            ),
        ),
        # Throttled jobs of one tenant x model by priority: a call's end wakes its scope's.
        Index(
            "ix_jobs_throttled_scope",
            func.coalesce(text("tenant"), text("''")),
            "model",
            text("priority DESC"),
            "enqueue_seq",
            postgresql_where=text(
                "needs_publish AND throttle_reason IS NOT NULL AND status IN ('queued', 'retrying')"
            ),
        ),
        # Jobs held by a rate window, by the time it frees them: every worker publishes
        # them when due (``flow_db.wake_due``).
        Index(
            "ix_jobs_rate_held",
            "dispatched_at",
            postgresql_where=text(
                "needs_publish AND throttle_reason IS NOT NULL"
                " AND status IN ('queued', 'retrying') AND throttled_until IS NOT NULL"
            ),
        ),
        # Parked throttled jobs by dispatch time, for the sweep; its condition names
        # ``dispatched_at`` (never NULL) so that only a query bounding it can use it.
        Index(
            "ix_jobs_throttled_dispatch",
            "dispatched_at",
            postgresql_where=text(
                "needs_publish AND throttle_reason IS NOT NULL AND status IN ('queued', 'retrying')"
                " AND dispatched_at IS NOT NULL"
            ),
        ),
        Index(
            "ix_jobs_running_scope", "model", "tenant", postgresql_where=text("status = 'running'")
        ),
        Index(None, "status", "created_at"),
        Index(None, "conversation_id", "enqueue_seq"),
        Index(None, "tenant", "created_at"),
        Index(None, "created_at"),
        # Replays only: every other job's NULL entered it at each write (migration 0020).
        Index(None, "replay_of", postgresql_where=text("replay_of IS NOT NULL")),
        Index(
            "ix_jobs_finished_at_unpurged",
            "finished_at",
            postgresql_where=text("purged_at IS NULL"),
        ),
        Index(
            None,
            "error_type",
            "finished_at",
            postgresql_where=text("error_type IS NOT NULL"),
        ),
        Index("ix_jobs_metadata", "metadata", postgresql_using="gin"),
        # Succeeded jobs per model by time, with job_costs' latency_ms and ttft_ms as the
        # view computes them: the percentiles per model read it alone (migration 0016).
        Index(
            "ix_jobs_succeeded_model_created_at",
            "model",
            "created_at",
            text("(round(extract(epoch FROM finished_at - started_at) * 1000)::bigint)"),
            text("(round(extract(epoch FROM first_token_at - started_at) * 1000)::bigint)"),
            postgresql_include=["id", "started_at", "first_token_at", "finished_at"],
            postgresql_where=text("status = 'succeeded'"),
        ),
        Index(
            "uq_jobs_batch_id_custom_id",
            "batch_id",
            "custom_id",
            unique=True,
            postgresql_where=text("batch_id IS NOT NULL"),
        ),
        Index(
            "ix_jobs_batch_id_status",
            "batch_id",
            "status",
            postgresql_where=text("batch_id IS NOT NULL"),
        ),
        # Results are read in line order, a page at a time.
        Index(
            "ix_jobs_batch_id_enqueue_seq",
            "batch_id",
            "enqueue_seq",
            postgresql_where=text("batch_id IS NOT NULL"),
        ),
        Index(
            "uq_jobs_tenant_idempotency_key",
            func.coalesce(text("tenant"), text("''")),
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
    )


class JobAttempt(Base):
    __tablename__ = "job_attempts"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = _now()
    first_token_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    http_status: Mapped[int | None] = mapped_column(Integer)
    error_type: Mapped[str | None]
    error: Mapped[str | None]
    gateway_request_id: Mapped[str | None]
    retryable: Mapped[bool | None]
    # The surface this call went to; NULL when no call was made (a lost worker, a bug).
    surface: Mapped[str | None]
    # The job's model, set on insert by a trigger (migration 0016): attempts group by model
    # without a join to jobs.
    model: Mapped[str | None] = mapped_column(server_default=FetchedValue())

    __table_args__ = (
        CheckConstraint(_in("surface", ATTEMPT_SURFACES), name="surface"),
        Index(None, "job_id", "attempt", unique=True),
        Index(None, "started_at"),
    )


class TokenUsage(Base):
    __tablename__ = "token_usage"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE")
    )
    model: Mapped[str]
    tenant: Mapped[str | None]
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", server_default=text("'{}'::jsonb"))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    cached_tokens: Mapped[int] = mapped_column(Integer)
    uncached_prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    reasoning_tokens: Mapped[int | None] = mapped_column(Integer)
    total_tokens: Mapped[int] = mapped_column(Integer)
    # Prompt tokens written to the prompt cache (Anthropic surface); part of
    # uncached_prompt_tokens, billed at the cache-write price.
    cache_write_tokens: Mapped[int] = mapped_column(Integer, server_default="0")
    # The gateway's usage object exactly as received, and what did not add up in it.
    raw_usage: Mapped[dict[str, Any]]
    usage_issues: Mapped[list[Any] | None] = mapped_column(NULLABLE_JSONB)
    # A call that finished after its job was cancelled: paid for, so counted in every total.
    job_cancelled: Mapped[bool] = mapped_column(server_default=text("false"))
    created_at: Mapped[datetime] = _now()
    # Priced once, when written, from the price in effect, so a later price never changes
    # it. NULL (never 0) when the model had no price: see ``ezq prices recompute``.
    cost_usd: Mapped[Decimal | None] = mapped_column(COST_USD)
    price_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("model_prices.id"))

    __table_args__ = (
        Index(None, "job_id", unique=True),
        Index(None, "created_at"),
        Index(None, "model", "created_at"),
        Index(None, "tenant", "created_at"),
        Index(None, "conversation_id"),
        Index("ix_token_usage_metadata", "metadata", postgresql_using="gin"),
        # Serves the usage views and ``ezq usage`` (which filter and group by the UTC day)
        # from the index alone, without reading the wide rows.
        Index(
            "ix_token_usage_utc_day",
            text("((created_at AT TIME ZONE 'UTC')::date)"),
            "tenant",
            "model",
            postgresql_include=list(USAGE_INDEX_INCLUDE),
        ),
        Index("ix_token_usage_unpriced", "created_at", postgresql_where=text("cost_usd IS NULL")),
        Index(
            "ix_token_usage_issues", "created_at", postgresql_where=text("usage_issues IS NOT NULL")
        ),
    )


class _RollupSums:
    """The sums every usage rollup keeps, over the ``token_usage`` rows of its key."""

    jobs: Mapped[int] = mapped_column(BigInteger)
    unpriced_jobs: Mapped[int] = mapped_column(BigInteger)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    cached_tokens: Mapped[int] = mapped_column(BigInteger)
    uncached_prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    completion_tokens: Mapped[int] = mapped_column(BigInteger)
    total_tokens: Mapped[int] = mapped_column(BigInteger)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger)
    # Over the priced rows (jobs - unpriced_jobs); 0 when there are none.
    cost_usd: Mapped[Decimal] = mapped_column(Numeric())


class UsageRollupDaily(_RollupSums, Base):
    """Sums of ``token_usage`` per UTC day, tenant, model and price, kept by triggers on
    ``token_usage`` (migration 0012). A key may have several rows, one per writer that
    found the others held by open transactions: read them summed (``usage_daily``)."""

    __tablename__ = "usage_rollup_daily"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    day: Mapped[date]
    tenant: Mapped[str | None]
    model: Mapped[str]
    price_id: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        Index(
            "ix_usage_rollup_daily_key",
            "day",
            "model",
            text("(coalesce(tenant, ''))"),
            text("(coalesce(price_id, 0))"),
        ),
    )


class UsageRollupConversation(_RollupSums, Base):
    """Sums of ``token_usage`` per conversation, kept by the same triggers."""

    __tablename__ = "usage_rollup_conversations"

    conversation_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    first_used_at: Mapped[datetime]
    last_used_at: Mapped[datetime]
    # What ``conversation_usage`` shows: NULL while none of the usage is priced.
    priced_cost_usd: Mapped[Decimal | None] = mapped_column(
        Numeric(),
        Computed("CASE WHEN jobs - unpriced_jobs > 0 THEN cost_usd END", persisted=True),
    )

    __table_args__ = (
        Index(
            "ix_usage_rollup_conversations_priced_cost_usd",
            text("priced_cost_usd DESC NULLS LAST"),
        ),
    )


class UsageRollupTagKey(Base):
    """A metadata tag key whose usage ``usage_rollup_tags`` sums (migration 0016); added with
    ``usage_rollup_tag_add(key)``, which fills its rollup from ``token_usage``."""

    __tablename__ = "usage_rollup_tag_keys"

    key: Mapped[str] = mapped_column(primary_key=True)
    added_at: Mapped[datetime] = _now()

    __table_args__ = (CheckConstraint("char_length(key) BETWEEN 1 AND 200", name="key"),)


class UsageRollupTag(_RollupSums, Base):
    """Sums of ``token_usage`` per UTC day, tenant, tag key and tag value (``metadata->>key``,
    NULL without the key), kept by triggers on ``token_usage`` for the keys of
    ``usage_rollup_tag_keys``. A key may have several rows: read them summed."""

    __tablename__ = "usage_rollup_tags"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    day: Mapped[date]
    tenant: Mapped[str | None]
    tag_key: Mapped[str]
    tag_value: Mapped[str | None]

    __table_args__ = (
        Index(
            "ix_usage_rollup_tags_key",
            "tag_key",
            "day",
            text("(coalesce(tenant, ''))"),
            text("(md5(coalesce(tag_value, '')))"),
        ),
    )


class ModelPrice(Base):
    """A model's price per million tokens from ``effective_from`` on; rows are never edited."""

    __tablename__ = "model_prices"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    model: Mapped[str]
    effective_from: Mapped[datetime] = mapped_column(server_default=func.now())
    input_per_mtok: Mapped[Decimal] = mapped_column(PRICE)
    cached_input_per_mtok: Mapped[Decimal] = mapped_column(PRICE)
    output_per_mtok: Mapped[Decimal] = mapped_column(PRICE)
    # Writing prompt tokens to the cache; NULL means at the plain input price.
    cache_write_input_per_mtok: Mapped[Decimal | None] = mapped_column(PRICE)
    currency: Mapped[str] = mapped_column(server_default="USD")
    created_at: Mapped[datetime] = _now()

    __table_args__ = (
        CheckConstraint("input_per_mtok >= 0", name="input_per_mtok"),
        CheckConstraint("cached_input_per_mtok >= 0", name="cached_input_per_mtok"),
        CheckConstraint("output_per_mtok >= 0", name="output_per_mtok"),
        CheckConstraint("cache_write_input_per_mtok >= 0", name="cache_write_input_per_mtok"),
        CheckConstraint("currency = 'USD'", name="currency"),
        Index(None, "model", "effective_from", unique=True),
    )


class WebhookDelivery(Base):
    """One event for one job or one batch: the outbox row, written with its final status."""

    __tablename__ = "webhook_deliveries"

    # Sent as the ``webhook-id`` header: the same on every attempt, so receivers dedupe.
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    event_type: Mapped[str]
    url: Mapped[str]
    # The exact JSON text that is signed and sent, so every attempt sends the same bytes.
    payload: Mapped[str]
    status: Mapped[str] = mapped_column(server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    # Attempts since the delivery was created or last redelivered; the retry schedule and
    # the attempt limit count these.
    round_attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    next_attempt_at: Mapped[datetime | None]
    # When the last task message for this delivery was due to run; the sweep republishes a
    # due delivery only once that is well past (the message was lost).
    dispatched_at: Mapped[datetime | None]
    lease_expires_at: Mapped[datetime | None]
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None]
    created_at: Mapped[datetime] = _now()
    delivered_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint(_in("status", WEBHOOK_STATUSES), name="status"),
        CheckConstraint(_in("event_type", WEBHOOK_EVENT_TYPES), name="event_type"),
        CheckConstraint("attempts >= 0 AND round_attempts >= 0", name="attempts"),
        CheckConstraint("(job_id IS NULL) <> (batch_id IS NULL)", name="subject"),
        Index(None, "job_id", "event_type", unique=True),
        Index(None, "batch_id", "event_type", unique=True),
        Index(None, "status", "created_at"),
        Index(None, "created_at"),
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
        ),
    )


class WebhookAttempt(Base):
    """One HTTP attempt of a delivery (or one refusal by the address policy)."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    delivery_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE")
    )
    attempt: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = _now()
    finished_at: Mapped[datetime | None]
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None]
    duration_ms: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        Index(None, "delivery_id", "attempt", unique=True),
        Index(None, "started_at"),
    )


class Worker(Base):
    """One worker process; its heartbeat renews the leases of the jobs it runs."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(primary_key=True)
    hostname: Mapped[str]
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = _now()
    heartbeat_at: Mapped[datetime] = _now()
    stopped_at: Mapped[datetime | None]
    # The broker queue it consumes (EZQ_QUEUE): the sweep counts the messages of every
    # queue a live worker consumes. NULL on rows written before migration 0022.
    queue: Mapped[str | None]

    __table_args__ = (Index(None, "heartbeat_at"),)


class DeadLetter(Base):
    """A broker message no worker could run, kept with the reason and the raw bytes."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    received_at: Mapped[datetime] = _now()
    queue: Mapped[str | None]
    reason: Mapped[str]
    task_name: Mapped[str | None]
    message_id: Mapped[str | None]
    worker: Mapped[str | None]
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    raw_bytes: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index(None, "received_at"),)


class SweepRun(Base):
    """When a periodic task last ran; the row is the lock that lets one run at a time."""

    __tablename__ = "sweep_runs"

    name: Mapped[str] = mapped_column(primary_key=True)
    last_run_at: Mapped[datetime]
    last_worker: Mapped[str | None]


class ApiKey(Base):
    """A key for the HTTP interface, bound to tenants or an admin key; only its hash is kept."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str | None]
    # The key's first characters (``ezq_`` and a few more), to recognise it in lists.
    prefix: Mapped[str]
    # SHA-256 of the whole key, hex: keys are 256 random bits, so a fast hash is enough.
    key_hash: Mapped[str]
    tenants: Mapped[list[str]] = mapped_column(
        ARRAY(Text), server_default=text("'{}'::text[]"), default=list
    )
    admin: Mapped[bool] = mapped_column(server_default=text("false"), default=False)
    created_at: Mapped[datetime] = _now()
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]

    __table_args__ = (
        # An admin key sees every tenant and names none; any other key names at least one.
        CheckConstraint("admin = (cardinality(tenants) = 0)", name="scope"),
        Index(None, "key_hash", unique=True),
    )


# --- flow control (service/flow) ---------------------------------------------------------

ANY = "*"  # a limit or budget scope that matches every tenant or every model


class FlowLimit(Base):
    """A limit on gateway calls for a model, a tenant, or a tenant x model (``*``: any)."""

    __tablename__ = "flow_limits"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(server_default=ANY)
    model: Mapped[str] = mapped_column(server_default=ANY)
    max_concurrent: Mapped[int | None] = mapped_column(Integer)
    requests_per_window: Mapped[int | None] = mapped_column(Integer)
    tokens_per_window: Mapped[int | None] = mapped_column(Integer)
    # Adaptive concurrency: the target time to first token, and the limit it has reached.
    adaptive_ttft_ms: Mapped[int | None] = mapped_column(Integer)
    current_concurrency: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()

    __table_args__ = (
        CheckConstraint("max_concurrent > 0", name="max_concurrent"),
        CheckConstraint("requests_per_window > 0", name="requests_per_window"),
        CheckConstraint("tokens_per_window > 0", name="tokens_per_window"),
        CheckConstraint(
            "adaptive_ttft_ms IS NULL OR (adaptive_ttft_ms > 0 AND max_concurrent IS NOT NULL)",
            name="adaptive",
        ),
        CheckConstraint("tenant <> '*' OR model <> '*'", name="scope"),
        Index(None, "tenant", "model", unique=True),
    )


class FlowBudget(Base):
    """A monthly spending cap in USD for a tenant, or a tenant x model."""

    __tablename__ = "flow_budgets"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str]
    model: Mapped[str] = mapped_column(server_default=ANY)
    monthly_usd: Mapped[Decimal] = mapped_column(Numeric(20, 6))
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()

    __table_args__ = (
        CheckConstraint("monthly_usd >= 0", name="monthly_usd"),
        Index(None, "tenant", "model", unique=True),
    )


class FlowAdmission(Base):
    """One admitted gateway call: what it reserved at claim and what it really used."""

    __tablename__ = "flow_admissions"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    tenant: Mapped[str | None]
    model: Mapped[str]
    admitted_at: Mapped[datetime] = _now()
    tokens_reserved: Mapped[int] = mapped_column(Integer)
    tokens_used: Mapped[int | None] = mapped_column(Integer)
    cost_reserved: Mapped[Decimal | None] = mapped_column(COST_USD)
    settled_at: Mapped[datetime | None]

    __table_args__ = (
        Index(None, "job_id", "attempt", unique=True),
        Index(None, "model", "admitted_at"),
        Index(None, "tenant", "admitted_at"),
        Index(None, "admitted_at"),
        Index(
            "ix_flow_admissions_unsettled",
            "tenant",
            "model",
            postgresql_where=text("settled_at IS NULL"),
        ),
    )


class BatchFile(Base):
    """A batch input file (its bytes in ``batch_file_chunks``) or a batch's output or error
    file (``batch_output``: rendered from the batch's jobs when read)."""

    __tablename__ = "batch_files"

    # ``file-`` and 32 hex digits, as the OpenAI API spells file ids.
    id: Mapped[str] = mapped_column(primary_key=True)
    tenant: Mapped[str | None]
    purpose: Mapped[str]
    filename: Mapped[str]
    bytes: Mapped[int] = mapped_column(BigInteger)
    line_count: Mapped[int] = mapped_column(Integer)
    created_by: Mapped[str | None]
    created_at: Mapped[datetime] = _now()

    __table_args__ = (
        CheckConstraint(_in("purpose", BATCH_FILE_PURPOSES), name="purpose"),
        Index(None, "tenant", "created_at"),
    )


class BatchFileChunk(Base):
    """A slice of an input file's bytes, in order: files are written and read a slice at a
    time, never whole."""

    __tablename__ = "batch_file_chunks"

    file_id: Mapped[str] = mapped_column(
        ForeignKey("batch_files.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Batch(Base):
    """An OpenAI-compatible batch; each of its lines is a job with ``jobs.batch_id``."""

    __tablename__ = "batches"

    # ``batch_`` and 32 hex digits.
    id: Mapped[str] = mapped_column(primary_key=True)
    tenant: Mapped[str | None]
    status: Mapped[str]
    endpoint: Mapped[str]
    completion_window: Mapped[str]
    input_file_id: Mapped[str] = mapped_column(ForeignKey("batch_files.id"))
    output_file_id: Mapped[str | None] = mapped_column(ForeignKey("batch_files.id"))
    error_file_id: Mapped[str | None] = mapped_column(ForeignKey("batch_files.id"))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", server_default=text("'{}'::jsonb"))
    callback_url: Mapped[str | None]
    created_by: Mapped[str | None]
    total: Mapped[int] = mapped_column(Integer)
    # A batch that failed validation: OpenAI's ``errors.data`` (code, line, message, param).
    errors: Mapped[list[Any] | None] = mapped_column(NULLABLE_JSONB)
    created_at: Mapped[datetime] = _now()
    in_progress_at: Mapped[datetime | None]
    finalizing_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    expired_at: Mapped[datetime | None]
    cancelling_at: Mapped[datetime | None]
    cancelled_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint(_in("status", BATCH_STATUSES), name="status"),
        CheckConstraint("total >= 0", name="total"),
        Index(None, "tenant", "created_at"),
        Index(None, "created_at"),
        Index(None, "output_file_id"),
        Index(None, "error_file_id"),
        # The sweep's question: which open batches have no line left to run.
        Index(
            "ix_batches_open",
            "created_at",
            postgresql_where=text("status IN ('in_progress', 'cancelling')"),
        ),
    )

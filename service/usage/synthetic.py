"""Synthetic usage for the SQL benchmark and tests, and a throwaway database to hold it.

Everything is generated inside PostgreSQL with ``INSERT ... SELECT generate_series``, so a
million jobs take about a minute, not an hour of round trips. The rows look like what the
worker writes: a conversation per few jobs, retried and failed jobs with their attempts,
usage with cached and reasoning tokens, priced by the same ``cost_of`` as the worker.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Integer, column, func, insert, select, text, true
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Session
from sqlalchemy.types import DateTime, Text, TypeEngine

from service.db.pricing import cost_of, price_at
from service.usage.costs import usage_table

MODELS = (
    "claude-sonnet-4-6",
    "claude-haiku-4-5",
    "claude-opus-4-7",
    "deepseek-v4-pro",
    "deepseek-v4-flash",
    "glm-5.1",
    "kimi-k2.6",
    "gpt-5.1",
)
# Tag values and the share of jobs below each: chat 50%, search 25%, ..., extract 2%.
FEATURES = ("chat", "search", "summarise", "classify", "extract")
FEATURE_CUTS = (0.0, 0.5, 0.75, 0.9, 0.98)
ERROR_TYPES = ("server_error", "timeout", "broken_stream", "client_error")


@dataclass(frozen=True, slots=True)
class SeedPlan:
    """How much to generate. ``rows`` succeeded jobs each get one usage row."""

    rows: int = 1_000_000
    days: int = 90
    tenants: int = 50
    models: tuple[str, ...] = MODELS
    # Models left without a price, so some usage is unpriced.
    unpriced_models: tuple[str, ...] = ("gpt-5.1",)
    jobs_per_conversation: int = 5
    failed_share: float = 0.03
    retried_share: float = 0.05
    stuck_jobs: int = 3
    tenant_prefix: str = "tenant"
    # Distinguishes the ids of several seeds in one database.
    tag: str = field(default_factory=lambda: secrets.token_hex(4))
    random_seed: float = 0.42


def price_rows(plan: SeedPlan, end: datetime) -> list[dict[str, Any]]:
    """Two prices per priced model: one from before the period, a 10% rise mid-way."""
    rows = []
    for i, model in enumerate(plan.models):
        if model in plan.unpriced_models:
            continue
        base = Decimal("0.25") * (i + 1)
        for start, factor in (
            (end - timedelta(days=plan.days + 30), Decimal(1)),
            (end - timedelta(days=plan.days // 2), Decimal("1.1")),
        ):
            rows.append(
                {
                    "model": model,
                    "effective_from": start,
                    "input_per_mtok": base * factor,
                    "cached_input_per_mtok": base * factor / 10,
                    "output_per_mtok": base * 5 * factor,
                }
            )
    return rows


# One row per job to create, with every random choice made once.
_SEED_JOBS = """
CREATE TEMP TABLE seed_jobs ON COMMIT DROP AS
SELECT g,
       md5(:tag || ':job:' || g)::uuid AS id,
       md5(:tag || ':conversation:' || (g / :per_conversation))::uuid AS conversation_id,
       :tenant_prefix || '-' || lpad(((g / :per_conversation) % :tenants)::text, 3, '0')
           AS tenant,
       (CAST(:models AS text[]))[1 + floor(power(random(), 1.5) * :model_count)::int]
           AS model,
       CASE WHEN g < :rows THEN 'succeeded' ELSE 'failed' END AS status,
       CAST(:end AS timestamptz) - interval '1 minute'
           - random() * make_interval(days => :days) AS created_at,
       random() * 2 AS queue_s,
       0.2 + power(random(), 2) * 4 AS ttft_s,
       1 + random() * 30 AS run_s,
       CASE WHEN g >= :rows THEN 3
            WHEN random() < :retried_share THEN 2 + (random() < 0.2)::int
            ELSE 1 END AS attempts,
       (CAST(:error_types AS text[]))[1 + floor(random() * :error_type_count)::int]
           AS error_type,
       (CAST(:features AS text[]))[width_bucket(random(), CAST(:feature_cuts AS float8[]))]
           AS feature,
       200 + floor(power(random(), 2) * 30000)::int AS prompt_tokens,
       random() AS cache_share,
       10 + floor(power(random(), 2) * 3000)::int AS completion_tokens
FROM generate_series(0, :total - 1) AS g
"""

_CONVERSATIONS = """
INSERT INTO conversations (id, tenant, metadata, created_at)
SELECT conversation_id, min(tenant), '{}'::jsonb, min(created_at)
FROM seed_jobs GROUP BY conversation_id
ORDER BY min(created_at)
"""

_JOBS = """
INSERT INTO jobs (id, conversation_id, status, model, input_messages, tenant, metadata,
                  request_hash, attempts, error_type, error_status, error, finish_reason,
                  created_at, started_at, first_token_at, finished_at)
SELECT id, conversation_id, status, model,
       '[{"role": "user", "content": "synthetic"}]'::jsonb,
       tenant, jsonb_build_object('feature', feature), md5(id::text), attempts,
       CASE WHEN status = 'failed' THEN error_type END,
       CASE WHEN status = 'failed' AND error_type = 'server_error' THEN 503 END,
       CASE WHEN status = 'failed' THEN 'synthetic failure' END,
       CASE WHEN status = 'succeeded' THEN 'stop' END,
       created_at,
       created_at + make_interval(secs => queue_s),
       CASE WHEN status = 'succeeded'
            THEN created_at + make_interval(secs => queue_s + ttft_s) END,
       created_at + make_interval(secs => queue_s + ttft_s + run_s)
FROM seed_jobs
ORDER BY created_at
"""

# Every attempt but the last failed with a retryable error; the last one decides. The
# model is written here too: a bulk load runs without the trigger that sets it.
_ATTEMPTS = """
INSERT INTO job_attempts (job_id, attempt, started_at, first_token_at, finished_at,
                          http_status, error_type, error, retryable, model)
SELECT s.id, a,
       s.created_at + make_interval(secs => s.queue_s + a - 1),
       CASE WHEN a = s.attempts AND s.status = 'succeeded'
            THEN s.created_at + make_interval(secs => s.queue_s + s.ttft_s) END,
       s.created_at + make_interval(secs => s.queue_s + s.ttft_s + s.run_s),
       CASE WHEN a = s.attempts AND s.status = 'succeeded' THEN 200
            WHEN s.error_type = 'server_error' THEN 503 END,
       CASE WHEN a < s.attempts OR s.status = 'failed' THEN s.error_type END,
       CASE WHEN a < s.attempts OR s.status = 'failed' THEN 'synthetic failure' END,
       CASE WHEN a < s.attempts OR s.status = 'failed'
            THEN s.error_type <> 'client_error' END,
       s.model
FROM seed_jobs s CROSS JOIN LATERAL generate_series(1, s.attempts) AS a
ORDER BY s.created_at, a
"""

# Cached tokens come in whole 2048-token blocks, as ezrouter reports them; reasoning
# models report reasoning tokens as part of the completion.
_USAGE = """
SELECT id AS job_id, conversation_id, model, tenant,
       jsonb_build_object('feature', feature) AS metadata,
       prompt_tokens,
       cached AS cached_tokens,
       prompt_tokens - cached AS uncached_prompt_tokens,
       completion_tokens,
       reasoning AS reasoning_tokens,
       prompt_tokens + completion_tokens AS total_tokens,
       0 AS cache_write_tokens,
       jsonb_build_object(
           'prompt_tokens', prompt_tokens,
           'completion_tokens', completion_tokens,
           'total_tokens', prompt_tokens + completion_tokens,
           'prompt_tokens_details', jsonb_build_object(
               'cached_tokens', cached, 'text_tokens', 0, 'audio_tokens', 0,
               'image_tokens', 0),
           'completion_tokens_details', jsonb_build_object(
               'reasoning_tokens', coalesce(reasoning, 0), 'text_tokens', 0,
               'audio_tokens', 0, 'image_tokens', 0),
           'usage_semantic', CASE WHEN model LIKE 'claude-%' THEN 'anthropic' ELSE 'openai' END,
           'input_tokens', prompt_tokens,
           'output_tokens', 0) AS raw_usage,
       created_at + make_interval(secs => queue_s + ttft_s + run_s) AS created_at
FROM (SELECT s.*,
             (floor(prompt_tokens * cache_share * 0.9 / 2048) * 2048)::int AS cached,
             CASE WHEN model LIKE 'deepseek%' THEN completion_tokens / 2 END AS reasoning
      FROM seed_jobs s WHERE status = 'succeeded') AS s
"""

_USAGE_COLUMNS: dict[str, TypeEngine[Any]] = {
    "job_id": UUID(as_uuid=True),
    "conversation_id": UUID(as_uuid=True),
    "model": Text(),
    "tenant": Text(),
    "metadata": JSONB(),
    "prompt_tokens": Integer(),
    "cached_tokens": Integer(),
    "uncached_prompt_tokens": Integer(),
    "completion_tokens": Integer(),
    "reasoning_tokens": Integer(),
    "total_tokens": Integer(),
    "cache_write_tokens": Integer(),
    "raw_usage": JSONB(),
    "created_at": DateTime(timezone=True),
}

# Jobs that started long ago and never finished: their worker is gone.
_STUCK = """
INSERT INTO jobs (id, conversation_id, status, model, input_messages, tenant, request_hash,
                  attempts, created_at, started_at, lease_expires_at)
SELECT md5(:tag || ':stuck:' || g)::uuid, c.id, 'running', :model,
       '[{"role": "user", "content": "synthetic"}]'::jsonb, c.tenant, 'stuck', 1,
       CAST(:end AS timestamptz) - interval '3 hours',
       CAST(:end AS timestamptz) - interval '3 hours' + make_interval(secs => g),
       CAST(:end AS timestamptz) - interval '2 hours'
FROM generate_series(1, :count) AS g
JOIN LATERAL (SELECT id, tenant FROM conversations
              WHERE id = md5(:tag || ':conversation:' || g)::uuid) c ON true
"""


def _usage_insert() -> Any:
    usage = (
        text(_USAGE)
        .columns(*(column(name, type_) for name, type_ in _USAGE_COLUMNS.items()))
        .subquery("usage")
    )
    # The price in effect when the usage was written, as the worker would have found it.
    price = price_at(usage.c.model, usage.c.created_at)
    table = usage_table()
    priced = select(
        *usage.c, price.c.id.label("price_id"), cost_of(usage, price).label("cost_usd")
    ).select_from(usage.outerjoin(price, true()))
    # In time order, as the worker appends them, so the heap correlates with created_at
    # and the planner sees what it would in production.
    priced = priced.order_by(usage.c.created_at)
    targets = [table.c[name] for name in _USAGE_COLUMNS]
    return insert(table).from_select([*targets, table.c.price_id, table.c.cost_usd], priced)


def seed_usage(session: Session, plan: SeedPlan, *, end: datetime | None = None) -> datetime:
    """Write prices, conversations, jobs, attempts and usage for ``plan``; return ``end``.

    Usage falls in the ``plan.days`` days before ``end`` (default: the database's now).
    """
    if end is None:
        end = session.execute(select(func.now())).scalar_one()
    failed = int(plan.rows * plan.failed_share)
    prices = price_rows(plan, end)
    if prices:
        session.execute(
            text(
                "INSERT INTO model_prices (model, effective_from, input_per_mtok,"
                " cached_input_per_mtok, output_per_mtok) VALUES (:model, :effective_from,"
                " :input_per_mtok, :cached_input_per_mtok, :output_per_mtok)"
            ),
            prices,
        )
    session.execute(text("SELECT setseed(:seed)"), {"seed": plan.random_seed})
    session.execute(
        text(_SEED_JOBS),
        {
            "tag": plan.tag,
            "per_conversation": plan.jobs_per_conversation,
            "tenant_prefix": plan.tenant_prefix,
            "tenants": plan.tenants,
            "models": list(plan.models),
            "model_count": len(plan.models),
            "rows": plan.rows,
            "total": plan.rows + failed,
            "end": end,
            "days": plan.days,
            "retried_share": plan.retried_share,
            "error_types": list(ERROR_TYPES),
            "error_type_count": len(ERROR_TYPES),
            "features": list(FEATURES),
            "feature_cuts": list(FEATURE_CUTS),
        },
    )
    for statement in (_CONVERSATIONS, _JOBS, _ATTEMPTS):
        session.execute(text(statement))
    session.execute(_usage_insert())
    if plan.stuck_jobs:
        session.execute(
            text(_STUCK),
            {"tag": plan.tag, "model": plan.models[0], "end": end, "count": plan.stuck_jobs},
        )
    session.execute(text("DROP TABLE seed_jobs"))
    return end

"""usage: model prices, costs and SQL views

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 18:45:00

The views are a public contract (docs/sql.md documents every column): a later migration
that changes one must say so in its message and in the changelog.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

USAGE_INDEX_INCLUDE = [
    "created_at",
    "prompt_tokens",
    "cached_tokens",
    "uncached_prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_usd",
]

# The same sums for a day and for a month. Sums of integers are bigint; cost_usd is the sum
# over priced rows only (NULL when none is priced), and unpriced_jobs says how many are not.
_TOTALS = """
    count(*) AS jobs,
    sum(u.prompt_tokens) AS prompt_tokens,
    sum(u.cached_tokens) AS cached_tokens,
    sum(u.uncached_prompt_tokens) AS uncached_prompt_tokens,
    sum(u.completion_tokens) AS completion_tokens,
    sum(u.total_tokens) AS total_tokens,
    sum(u.cost_usd) AS cost_usd,
    count(*) FILTER (WHERE u.cost_usd IS NULL) AS unpriced_jobs"""

VIEWS = {
    # The day expression is exactly the one of ix_token_usage_utc_day, so that a filter on
    # ``day`` is pushed into the scan and served by that index.
    "usage_daily": f"""
        SELECT (u.created_at AT TIME ZONE 'UTC')::date AS day,
               u.tenant,
               u.model,{_TOTALS}
        FROM token_usage u
        GROUP BY 1, 2, 3""",
    "usage_monthly": f"""
        SELECT date_trunc('month', u.created_at AT TIME ZONE 'UTC')::date AS month,
               u.tenant,
               u.model,{_TOTALS}
        FROM token_usage u
        GROUP BY 1, 2, 3""",
    "job_costs": """
        SELECT j.id AS job_id,
               j.conversation_id,
               j.tenant,
               j.model,
               j.status,
               j.attempts,
               j.error_type,
               j.metadata,
               j.created_at,
               j.started_at,
               j.finished_at,
               u.prompt_tokens,
               u.cached_tokens,
               u.uncached_prompt_tokens,
               u.completion_tokens,
               u.reasoning_tokens,
               u.total_tokens,
               u.cost_usd,
               u.price_id,
               round(extract(epoch FROM j.started_at - j.created_at) * 1000)::bigint
                   AS queue_ms,
               round(extract(epoch FROM j.finished_at - j.started_at) * 1000)::bigint
                   AS latency_ms,
               round(extract(epoch FROM j.first_token_at - j.started_at) * 1000)::bigint
                   AS ttft_ms
        FROM jobs j
        LEFT JOIN token_usage u ON u.job_id = j.id""",
    # Grouped by the conversation's primary key, so its other columns may be selected.
    "conversation_usage": f"""
        SELECT c.id AS conversation_id,
               c.tenant,
               c.metadata,
               c.created_at,{_TOTALS},
               min(u.created_at) AS first_used_at,
               max(u.created_at) AS last_used_at
        FROM conversations c
        JOIN token_usage u ON u.conversation_id = c.id
        GROUP BY c.id""",
}


def upgrade() -> None:
    op.create_table(
        "model_prices",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column(
            "effective_from",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("input_per_mtok", sa.Numeric(20, 10), nullable=False),
        sa.Column("cached_input_per_mtok", sa.Numeric(20, 10), nullable=False),
        sa.Column("output_per_mtok", sa.Numeric(20, 10), nullable=False),
        sa.Column("currency", sa.Text(), server_default="USD", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("input_per_mtok >= 0", name=op.f("ck_model_prices_input_per_mtok")),
        sa.CheckConstraint(
            "cached_input_per_mtok >= 0", name=op.f("ck_model_prices_cached_input_per_mtok")
        ),
        sa.CheckConstraint("output_per_mtok >= 0", name=op.f("ck_model_prices_output_per_mtok")),
        sa.CheckConstraint("currency = 'USD'", name=op.f("ck_model_prices_currency")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_prices")),
    )
    op.create_index(
        op.f("ix_model_prices_model_effective_from"),
        "model_prices",
        ["model", "effective_from"],
        unique=True,
    )
    # Nullable columns without a default: adding them does not rewrite the table.
    op.add_column("token_usage", sa.Column("cost_usd", sa.Numeric(32, 16), nullable=True))
    op.add_column("token_usage", sa.Column("price_id", sa.BigInteger(), nullable=True))
    op.create_foreign_key(
        op.f("fk_token_usage_price_id_model_prices"),
        "token_usage",
        "model_prices",
        ["price_id"],
        ["id"],
    )
    op.create_index(
        "ix_token_usage_utc_day",
        "token_usage",
        [sa.text("((created_at AT TIME ZONE 'UTC')::date)"), "tenant", "model"],
        unique=False,
        postgresql_include=USAGE_INDEX_INCLUDE,
    )
    op.create_index(
        "ix_token_usage_unpriced",
        "token_usage",
        ["created_at"],
        unique=False,
        postgresql_where=sa.text("cost_usd IS NULL"),
    )
    for name, body in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {body}")


def downgrade() -> None:
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW {name}")
    op.drop_index(
        "ix_token_usage_unpriced",
        table_name="token_usage",
        postgresql_where=sa.text("cost_usd IS NULL"),
    )
    op.drop_index("ix_token_usage_utc_day", table_name="token_usage")
    op.drop_constraint(
        op.f("fk_token_usage_price_id_model_prices"), "token_usage", type_="foreignkey"
    )
    op.drop_column("token_usage", "price_id")
    op.drop_column("token_usage", "cost_usd")
    op.drop_index(op.f("ix_model_prices_model_effective_from"), table_name="model_prices")
    op.drop_table("model_prices")

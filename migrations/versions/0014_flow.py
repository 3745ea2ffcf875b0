"""flow control: limits, budgets, admissions, job priority and throttling

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01 19:00:00

Adds, as public interface (README "Flow control"):
- ``jobs.priority`` (0-9, default 5, higher first), ``jobs.throttled_until`` and
  ``jobs.throttle_reason``: a queued job held back by flow control, why and until when.
- ``flow_limits``: max concurrent calls, requests and tokens per window, per model, per
  tenant or per tenant x model (``*`` is any), read at every claim; optionally adaptive.
- ``flow_budgets``: monthly USD budgets per tenant, or per tenant x model.
- ``flow_admissions``: one row per admitted gateway call, with the tokens and worst-case
  cost it reserved and the tokens it really used; the rate windows and budget reservations
  are computed from it.
- ``flow_spend``: priced spend per tenant, model and UTC month, added when a call settles
  (backfilled here from ``token_usage`` for the current month), so that a budget check
  reads one row instead of summing the month's usage.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PENDING = sa.text("status IN ('queued', 'retrying')")
_RUNNING = sa.text("status = 'running'")
_THROTTLED = sa.text(
    "needs_publish AND throttle_reason IS NOT NULL AND status IN ('queued', 'retrying')"
)


def _timestamps() -> list[sa.Column[object]]:
    return [
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
    ]


def upgrade() -> None:
    op.add_column(
        "jobs", sa.Column("priority", sa.SmallInteger(), server_default="5", nullable=False)
    )
    op.add_column("jobs", sa.Column("throttled_until", sa.DateTime(timezone=True), nullable=True))
    op.add_column("jobs", sa.Column("throttle_reason", sa.Text(), nullable=True))
    op.create_check_constraint(op.f("ck_jobs_priority"), "jobs", "priority BETWEEN 0 AND 9")
    # The claim's ranking: a skip scan over the tenants with work waiting, then each
    # tenant's best jobs by priority and its oldest (see service/db/flow.py).
    op.create_index(
        "ix_jobs_pending_tenant_rank",
        "jobs",
        [sa.text("coalesce(tenant, '')"), sa.text("priority DESC"), "enqueue_seq"],
        unique=False,
        postgresql_where=_PENDING,
    )
    op.create_index(
        "ix_jobs_pending_tenant_seq",
        "jobs",
        [sa.text("coalesce(tenant, '')"), "enqueue_seq"],
        unique=False,
        postgresql_where=_PENDING,
    )
    op.create_index(
        "ix_jobs_throttled",
        "jobs",
        [sa.text("priority DESC"), "enqueue_seq"],
        unique=False,
        postgresql_where=_THROTTLED,
    )
    op.create_index(
        "ix_jobs_running_scope",
        "jobs",
        ["model", "tenant"],
        unique=False,
        postgresql_where=_RUNNING,
    )
    op.create_table(
        "flow_limits",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("tenant", sa.Text(), server_default="*", nullable=False),
        sa.Column("model", sa.Text(), server_default="*", nullable=False),
        sa.Column("max_concurrent", sa.Integer(), nullable=True),
        sa.Column("requests_per_window", sa.Integer(), nullable=True),
        sa.Column("tokens_per_window", sa.Integer(), nullable=True),
        sa.Column("adaptive_ttft_ms", sa.Integer(), nullable=True),
        sa.Column("current_concurrency", sa.Float(), nullable=True),
        *_timestamps(),
        sa.CheckConstraint("max_concurrent > 0", name=op.f("ck_flow_limits_max_concurrent")),
        sa.CheckConstraint(
            "requests_per_window > 0", name=op.f("ck_flow_limits_requests_per_window")
        ),
        sa.CheckConstraint("tokens_per_window > 0", name=op.f("ck_flow_limits_tokens_per_window")),
        sa.CheckConstraint(
            "adaptive_ttft_ms IS NULL OR (adaptive_ttft_ms > 0 AND max_concurrent IS NOT NULL)",
            name=op.f("ck_flow_limits_adaptive"),
        ),
        sa.CheckConstraint("tenant <> '*' OR model <> '*'", name=op.f("ck_flow_limits_scope")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_flow_limits")),
    )
    op.create_index(
        op.f("ix_flow_limits_tenant_model"), "flow_limits", ["tenant", "model"], unique=True
    )
    op.create_table(
        "flow_budgets",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), server_default="*", nullable=False),
        sa.Column("monthly_usd", sa.Numeric(20, 6), nullable=False),
        *_timestamps(),
        sa.CheckConstraint("monthly_usd >= 0", name=op.f("ck_flow_budgets_monthly_usd")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_flow_budgets")),
    )
    op.create_index(
        op.f("ix_flow_budgets_tenant_model"), "flow_budgets", ["tenant", "model"], unique=True
    )
    op.create_table(
        "flow_admissions",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("job_id", sa.UUID(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=True),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column(
            "admitted_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("tokens_reserved", sa.Integer(), nullable=False),
        sa.Column("tokens_used", sa.Integer(), nullable=True),
        sa.Column("cost_reserved", sa.Numeric(32, 16), nullable=True),
        sa.Column("settled_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_flow_admissions_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_flow_admissions")),
    )
    op.create_index(
        op.f("ix_flow_admissions_job_id_attempt"),
        "flow_admissions",
        ["job_id", "attempt"],
        unique=True,
    )
    op.create_index(
        op.f("ix_flow_admissions_model_admitted_at"),
        "flow_admissions",
        ["model", "admitted_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_flow_admissions_tenant_admitted_at"),
        "flow_admissions",
        ["tenant", "admitted_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_flow_admissions_admitted_at"), "flow_admissions", ["admitted_at"], unique=False
    )
    op.create_index(
        "ix_flow_admissions_unsettled",
        "flow_admissions",
        ["tenant", "model"],
        unique=False,
        postgresql_where=sa.text("settled_at IS NULL"),
    )
    op.create_table(
        "flow_spend",
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("cost_usd", sa.Numeric(32, 16), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("tenant", "model", "month", name=op.f("pk_flow_spend")),
    )
    # This month's spend so far, so that budgets set from now on count it.
    op.execute(
        """
        INSERT INTO flow_spend (tenant, model, month, cost_usd)
        SELECT tenant, model, date_trunc('month', created_at AT TIME ZONE 'UTC')::date,
               sum(cost_usd)
        FROM token_usage
        WHERE tenant IS NOT NULL AND cost_usd IS NOT NULL
          AND created_at >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
        GROUP BY 1, 2, 3
        """
    )


def downgrade() -> None:
    op.drop_table("flow_spend")
    op.drop_index(
        "ix_flow_admissions_unsettled",
        table_name="flow_admissions",
        postgresql_where=sa.text("settled_at IS NULL"),
    )
    op.drop_table("flow_admissions")
    op.drop_index(op.f("ix_flow_budgets_tenant_model"), table_name="flow_budgets")
    op.drop_table("flow_budgets")
    op.drop_index(op.f("ix_flow_limits_tenant_model"), table_name="flow_limits")
    op.drop_table("flow_limits")
    op.drop_index("ix_jobs_running_scope", table_name="jobs", postgresql_where=_RUNNING)
    op.drop_index("ix_jobs_throttled", table_name="jobs", postgresql_where=_THROTTLED)
    op.drop_index("ix_jobs_pending_tenant_seq", table_name="jobs", postgresql_where=_PENDING)
    op.drop_index("ix_jobs_pending_tenant_rank", table_name="jobs", postgresql_where=_PENDING)
    op.drop_constraint(op.f("ck_jobs_priority"), "jobs", type_="check")
    op.drop_column("jobs", "throttle_reason")
    op.drop_column("jobs", "throttled_until")
    op.drop_column("jobs", "priority")

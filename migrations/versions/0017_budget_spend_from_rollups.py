"""budgets count spend from the usage rollups; drop flow_spend

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-01 23:00:00

Budgets now read a tenant's spend this UTC month from ``usage_rollup_daily`` (kept exact by
triggers on ``token_usage``, in the transaction that writes each usage row) instead of
``flow_spend``, which only a settling call used to add to. A call settles in the
transaction that records its outcome, so it counts once against a budget: its reservation
before that commit, its priced usage after. Spend is counted whether or not a budget or
limit existed when the call ran, and a call with no limit and no budget anywhere writes no
``flow_admissions`` row. Drops the table ``flow_spend`` (downgrade recreates it with this
month's spend).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_table("flow_spend")


def downgrade() -> None:
    op.create_table(
        "flow_spend",
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("cost_usd", sa.Numeric(32, 16), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("tenant", "model", "month", name=op.f("pk_flow_spend")),
    )
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

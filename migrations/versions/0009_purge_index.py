"""purge: find ended, unpurged jobs by end time

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 16:30:00

Adds the partial index ``ix_jobs_finished_at_unpurged`` on ``jobs (finished_at) WHERE
purged_at IS NULL``, which ``ezq purge`` and the retention sweep (``EZQ_RETENTION_DAYS``)
read to find what is old enough, without scanning what was purged already.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_jobs_finished_at_unpurged",
        "jobs",
        ["finished_at"],
        postgresql_where=sa.text("purged_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_finished_at_unpurged", table_name="jobs")

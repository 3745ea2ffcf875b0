"""operations: replayed jobs point at their original; purged content is marked

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 16:00:00

Adds to ``jobs``:
- ``replay_of`` (uuid, NULL): the job this one replays (``ezq jobs replay``,
  ``POST /v1/jobs/{id}/replay``); set NULL if the original is deleted. Indexed.
- ``purged_at`` (timestamptz, NULL): when ``ezq purge`` deleted the job's content (its
  messages, request messages and webhook payloads); usage and cost rows are kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("replay_of", postgresql.UUID(as_uuid=True), nullable=True))
    op.add_column("jobs", sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))
    op.create_foreign_key(
        "fk_jobs_replay_of_jobs", "jobs", "jobs", ["replay_of"], ["id"], ondelete="SET NULL"
    )
    op.create_index("ix_jobs_replay_of", "jobs", ["replay_of"])
    # Failed jobs by time and error type: what `ezq jobs list --status failed --error-type`
    # and `ezq status` read.
    op.create_index(
        "ix_jobs_error_type_finished_at",
        "jobs",
        ["error_type", "finished_at"],
        postgresql_where=sa.text("error_type IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_error_type_finished_at", table_name="jobs")
    op.drop_index("ix_jobs_replay_of", table_name="jobs")
    op.drop_constraint("fk_jobs_replay_of_jobs", "jobs", type_="foreignkey")
    op.drop_column("jobs", "purged_at")
    op.drop_column("jobs", "replay_of")

"""throttled jobs by tenant x model and priority; rate-held jobs by due time

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-07 12:00:00

Changes, as public interface (README "SQL tables"):
- Adds ``ix_jobs_throttled_scope``: the jobs that wait throttled with no message
  (``needs_publish AND throttle_reason IS NOT NULL``, pending) by
  ``(coalesce(tenant, ''), model, priority DESC, enqueue_seq)``.

Why: when a call ends, the throttled jobs whose hold its end can lift are those of its
tenant x model (every limit that counted the call covers them). They are read per priority
level in enqueue order (the oldest of a level is the one aging raised most), a few index
entries each, whatever the number of throttled jobs of other scopes or of pending jobs of
the scope that have a message; ``ix_jobs_throttled`` (by priority across every scope)
would read every other scope's throttled jobs of a level to find them.

- Adds ``ix_jobs_rate_held``: the throttled jobs held by a rate window
  (``throttled_until IS NOT NULL``) by ``dispatched_at`` (when the window frees them).

Why: every worker publishes rate-held jobs when they are due, whatever the sweep's
interval (``flow_db.wake_due``): the most overdue first and the next due time, each a few
index entries, never the jobs held by a concurrency limit (which a call's end wakes).

Both are built while the table is locked against writes (a scan of ``jobs``; they hold only
throttled jobs).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_THROTTLED = "needs_publish AND throttle_reason IS NOT NULL AND status IN ('queued', 'retrying')"


def upgrade() -> None:
    op.create_index(
        "ix_jobs_throttled_scope",
        "jobs",
        [sa.text("coalesce(tenant, '')"), "model", sa.text("priority DESC"), "enqueue_seq"],
        unique=False,
        postgresql_where=sa.text(_THROTTLED),
    )
    op.create_index(
        "ix_jobs_rate_held",
        "jobs",
        ["dispatched_at"],
        unique=False,
        postgresql_where=sa.text(f"{_THROTTLED} AND throttled_until IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_rate_held", table_name="jobs")
    op.drop_index("ix_jobs_throttled_scope", table_name="jobs")

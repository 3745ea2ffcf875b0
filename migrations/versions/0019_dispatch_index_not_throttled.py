"""pending jobs by dispatch time: the throttled ones apart

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-05 19:00:00

Changes, as public interface (README "SQL tables"):
- ``ix_jobs_pending_dispatch`` (pending jobs by ``dispatched_at``) leaves out the jobs
  that wait throttled with no message (``needs_publish AND throttle_reason IS NOT
  NULL``): its condition becomes ``status IN ('queued', 'retrying') AND (NOT
  needs_publish OR throttle_reason IS NULL)``.
- Adds ``ix_jobs_throttled_dispatch``: those throttled jobs by ``dispatched_at`` (the
  condition of ``ix_jobs_throttled``, and ``dispatched_at IS NOT NULL``), for the sweep
  that publishes them when they are due.

Why: a partial index whose condition is just "pending" is, to a planner that believes
few jobs are pending (statistics taken at a quiet moment, and kept by a prepared
statement until the next ANALYZE), the cheapest way to read any pending job. The claim's
ranking then read the whole backlog through it, sorted, at each claim: per tenant's best
jobs, its oldest one, and whether any throttled job waits (200 pending jobs: 1,201 rows of
``jobs`` read per claim, against 11 through the ranking's own indexes). With this
condition a query that says only "pending" cannot use it, and whether a throttled job
waits is read from the throttled jobs' indexes, the only ones that hold nothing else.
The throttled jobs' new index names ``dispatched_at`` in its condition (never NULL: the
column is NOT NULL), so that only a query bounding it (the sweep's) can use it: the
choice of the best throttled jobs to wake, by priority, reads ``ix_jobs_throttled`` in its
order and stops, where an index by dispatch time would have it read and sort them all.

Both indexes are built while the table is locked against writes (a scan of ``jobs``; they
hold only pending jobs).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PENDING = "status IN ('queued', 'retrying')"
_THROTTLED = f"needs_publish AND throttle_reason IS NOT NULL AND {_PENDING}"
_THROTTLED_DISPATCH = f"{_THROTTLED} AND dispatched_at IS NOT NULL"
_DISPATCH_BEFORE = _PENDING
_DISPATCH_NOW = f"{_PENDING} AND (NOT needs_publish OR throttle_reason IS NULL)"


def _dispatch_index(condition: str) -> None:
    op.create_index(
        "ix_jobs_pending_dispatch",
        "jobs",
        ["dispatched_at"],
        unique=False,
        postgresql_where=sa.text(condition),
    )


def upgrade() -> None:
    op.drop_index("ix_jobs_pending_dispatch", table_name="jobs")
    _dispatch_index(_DISPATCH_NOW)
    op.create_index(
        "ix_jobs_throttled_dispatch",
        "jobs",
        ["dispatched_at"],
        unique=False,
        postgresql_where=sa.text(_THROTTLED_DISPATCH),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_throttled_dispatch", table_name="jobs")
    op.drop_index("ix_jobs_pending_dispatch", table_name="jobs")
    _dispatch_index(_DISPATCH_BEFORE)

"""the index of replays holds replays only

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-05 22:15:00

Changes, as public interface (README "SQL tables", docs/sql.md):
- ``ix_jobs_replay_of`` becomes partial: ``WHERE replay_of IS NOT NULL``. Every query
  that reads it names a job it replays (``replay_of = …``, which implies the condition),
  and ``WHERE replay_of IS NOT NULL`` (what replays cost) now reads the replays only.

Why: ``replay_of`` is NULL on every job but a replay, and every version of every job's
row entered the index anyway: two entries a job (written, then ended), each part of the
job's write, its WAL and its index page locks, for rows no query looks up. Now a job
enters it only if it replays another. The index is dropped and built again in one
transaction, which holds ``jobs`` locked against reads and writes until it commits (a scan
of ``jobs``; the new index holds only replays).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _replay_index(condition: str | None) -> None:
    op.create_index(
        "ix_jobs_replay_of",
        "jobs",
        ["replay_of"],
        unique=False,
        postgresql_where=sa.text(condition) if condition else None,
    )


def upgrade() -> None:
    op.drop_index("ix_jobs_replay_of", table_name="jobs")
    _replay_index("replay_of IS NOT NULL")


def downgrade() -> None:
    op.drop_index("ix_jobs_replay_of", table_name="jobs")
    _replay_index(None)

"""workers record the queue they consume

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-07 09:00:00

Changes, as public interface (README "SQL tables"):
- ``workers.queue`` (text, NULL for rows written before this revision): the broker queue
  (``EZQ_QUEUE``) the worker process consumes, written by its heartbeat.

Why: the sweep compares the messages the broker holds with the live jobs in the database
to tell that messages were lost. Every worker sharing a database is one pool, whatever
queue its messages come on, so the messages to count are those of every queue a live
worker consumes, not only the sweeping worker's own: with two queues on one database, a
worker of one counted the other's jobs and none of its messages, warned on every sweep
that messages were lost, and republished the other queue's waiting jobs onto its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("workers", sa.Column("queue", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("workers", "queue")

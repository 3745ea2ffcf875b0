"""faults: worker heartbeats, lease holders, dispatch flags, dead letters, cancelled spend

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 16:15:00

Adds, as public interface (README "Tables"):
- ``workers``: one row per worker process, with its heartbeat; a running job's lease is
  renewed by its worker's heartbeat, and a job whose worker stopped beating is taken over.
- ``jobs.lease_holder``: the worker (``workers.id``) that holds a running job's lease.
- ``jobs.needs_publish``: true while a pending job has no run message on the broker (the
  broker was down at enqueue, a waiting turn was parked, a long backoff); the sweep publishes
  it when it is due.
- ``dead_letters``: broker messages no worker could run (malformed, unknown task, bad
  arguments), kept with the raw message and the reason.
- ``sweep_runs``: when the sweep last ran, so that one sweep runs at a time across workers.
- ``token_usage.job_cancelled``: the usage row of a call that finished after its job was
  cancelled; it is paid for, so it counts in every total.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("hostname", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column(
            "started_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "heartbeat_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
    )
    op.create_index(op.f("ix_workers_heartbeat_at"), "workers", ["heartbeat_at"], unique=False)
    op.add_column("jobs", sa.Column("lease_holder", sa.Text(), nullable=True))
    op.add_column(
        "jobs",
        sa.Column("needs_publish", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    op.create_index(
        "ix_jobs_running_lease",
        "jobs",
        ["lease_expires_at"],
        unique=False,
        postgresql_where=sa.text("status = 'running'"),
    )
    op.create_index(
        "ix_jobs_pending_dispatch",
        "jobs",
        ["dispatched_at"],
        unique=False,
        postgresql_where=sa.text("status IN ('queued', 'retrying')"),
    )
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column(
            "received_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("queue", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("task_name", sa.Text(), nullable=True),
        sa.Column("message_id", sa.Text(), nullable=True),
        sa.Column("worker", sa.Text(), nullable=True),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("raw_bytes", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letters")),
    )
    op.create_index(
        op.f("ix_dead_letters_received_at"), "dead_letters", ["received_at"], unique=False
    )
    op.create_table(
        "sweep_runs",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_worker", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_sweep_runs")),
    )
    op.add_column(
        "token_usage",
        sa.Column("job_cancelled", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )


def downgrade() -> None:
    op.drop_column("token_usage", "job_cancelled")
    op.drop_table("sweep_runs")
    op.drop_index(op.f("ix_dead_letters_received_at"), table_name="dead_letters")
    op.drop_table("dead_letters")
    op.drop_index(
        "ix_jobs_pending_dispatch",
        table_name="jobs",
        postgresql_where=sa.text("status IN ('queued', 'retrying')"),
    )
    op.drop_index(
        "ix_jobs_running_lease",
        table_name="jobs",
        postgresql_where=sa.text("status = 'running'"),
    )
    op.drop_column("jobs", "needs_publish")
    op.drop_column("jobs", "lease_holder")
    op.drop_index(op.f("ix_workers_heartbeat_at"), table_name="workers")
    op.drop_table("workers")

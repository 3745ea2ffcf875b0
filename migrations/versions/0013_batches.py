"""batches: OpenAI-compatible batch files and batches, whose lines are ordinary jobs

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01 19:00:00

Adds, as public interface (README "Batches", docs/sql.md):
- ``batch_files``: an uploaded input file (``purpose = 'batch'``, its bytes kept in
  ``batch_file_chunks``) or a batch's output or error file (``purpose = 'batch_output'``,
  rendered from the batch's jobs when read).
- ``batches``: one row per batch, with OpenAI's statuses and timestamps.
- ``jobs.batch_id`` and ``jobs.custom_id``: the batch a job is a line of, and the line's
  ``custom_id`` (unique within its batch).
- ``webhook_deliveries.batch_id``: a batch's one webhook (``batch.completed``,
  ``batch.failed``, ``batch.cancelled``); a delivery belongs to a job or to a batch.
- ``job_costs`` gains ``batch_id`` and ``custom_id`` at its end.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH_STATUSES = (
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
)
JOB_EVENTS = ("job.succeeded", "job.failed", "job.cancelled")
BATCH_EVENTS = ("batch.completed", "batch.failed", "batch.cancelled")


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _load(file_name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"_ezq_{file_name[:4]}", Path(__file__).with_name(file_name)
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _job_costs_before() -> str:
    """``job_costs`` as 0008 left it."""
    surfaces = _load("0008_surfaces.py")
    body: str = surfaces._with_appended("job_costs", surfaces._usage_migration().VIEWS["job_costs"])
    return body


def _job_costs_after() -> str:
    head, sep, tail = _job_costs_before().partition("\n        FROM ")
    return head + ",\n               j.batch_id,\n               j.custom_id" + sep + tail


def _timestamp(name: str) -> sa.Column[sa.DateTime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=True)


def upgrade() -> None:
    op.create_table(
        "batch_files",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=True),
        sa.Column("purpose", sa.Text(), nullable=False),
        sa.Column("filename", sa.Text(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("line_count", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "purpose IN ('batch', 'batch_output')", name=op.f("ck_batch_files_purpose")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batch_files")),
    )
    op.create_index(
        op.f("ix_batch_files_tenant_created_at"), "batch_files", ["tenant", "created_at"]
    )
    op.create_table(
        "batch_file_chunks",
        sa.Column("file_id", sa.Text(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["file_id"],
            ["batch_files.id"],
            name=op.f("fk_batch_file_chunks_file_id_batch_files"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("file_id", "seq", name=op.f("pk_batch_file_chunks")),
    )
    op.create_table(
        "batches",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column("completion_window", sa.Text(), nullable=False),
        sa.Column("input_file_id", sa.Text(), nullable=False),
        sa.Column("output_file_id", sa.Text(), nullable=True),
        sa.Column("error_file_id", sa.Text(), nullable=True),
        sa.Column(
            "metadata",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("callback_url", sa.Text(), nullable=True),
        sa.Column("created_by", sa.Text(), nullable=True),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("errors", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        _timestamp("in_progress_at"),
        _timestamp("finalizing_at"),
        _timestamp("completed_at"),
        _timestamp("failed_at"),
        _timestamp("expires_at"),
        _timestamp("expired_at"),
        _timestamp("cancelling_at"),
        _timestamp("cancelled_at"),
        sa.CheckConstraint(_in("status", BATCH_STATUSES), name=op.f("ck_batches_status")),
        sa.CheckConstraint("total >= 0", name=op.f("ck_batches_total")),
        sa.ForeignKeyConstraint(
            ["input_file_id"],
            ["batch_files.id"],
            name=op.f("fk_batches_input_file_id_batch_files"),
        ),
        sa.ForeignKeyConstraint(
            ["output_file_id"],
            ["batch_files.id"],
            name=op.f("fk_batches_output_file_id_batch_files"),
        ),
        sa.ForeignKeyConstraint(
            ["error_file_id"],
            ["batch_files.id"],
            name=op.f("fk_batches_error_file_id_batch_files"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
    )
    op.create_index(op.f("ix_batches_tenant_created_at"), "batches", ["tenant", "created_at"])
    op.create_index(op.f("ix_batches_created_at"), "batches", ["created_at"])
    op.create_index(op.f("ix_batches_output_file_id"), "batches", ["output_file_id"])
    op.create_index(op.f("ix_batches_error_file_id"), "batches", ["error_file_id"])
    op.create_index(
        "ix_batches_open",
        "batches",
        ["created_at"],
        postgresql_where=sa.text("status IN ('in_progress', 'cancelling')"),
    )
    op.add_column("jobs", sa.Column("batch_id", sa.Text(), nullable=True))
    op.add_column("jobs", sa.Column("custom_id", sa.Text(), nullable=True))
    op.create_foreign_key(op.f("fk_jobs_batch_id_batches"), "jobs", "batches", ["batch_id"], ["id"])
    op.create_index(
        "uq_jobs_batch_id_custom_id",
        "jobs",
        ["batch_id", "custom_id"],
        unique=True,
        postgresql_where=sa.text("batch_id IS NOT NULL"),
    )
    op.create_index(
        "ix_jobs_batch_id_status",
        "jobs",
        ["batch_id", "status"],
        postgresql_where=sa.text("batch_id IS NOT NULL"),
    )
    op.create_index(
        "ix_jobs_batch_id_enqueue_seq",
        "jobs",
        ["batch_id", "enqueue_seq"],
        postgresql_where=sa.text("batch_id IS NOT NULL"),
    )
    op.alter_column("webhook_deliveries", "job_id", existing_type=sa.Uuid(), nullable=True)
    op.add_column("webhook_deliveries", sa.Column("batch_id", sa.Text(), nullable=True))
    op.create_foreign_key(
        op.f("fk_webhook_deliveries_batch_id_batches"),
        "webhook_deliveries",
        "batches",
        ["batch_id"],
        ["id"],
        ondelete="CASCADE",
    )
    op.create_index(
        op.f("ix_webhook_deliveries_batch_id_event_type"),
        "webhook_deliveries",
        ["batch_id", "event_type"],
        unique=True,
    )
    op.create_check_constraint(
        op.f("ck_webhook_deliveries_subject"),
        "webhook_deliveries",
        "(job_id IS NULL) <> (batch_id IS NULL)",
    )
    op.drop_constraint(op.f("ck_webhook_deliveries_event_type"), "webhook_deliveries")
    op.create_check_constraint(
        op.f("ck_webhook_deliveries_event_type"),
        "webhook_deliveries",
        _in("event_type", (*JOB_EVENTS, *BATCH_EVENTS)),
    )
    op.execute(f"CREATE OR REPLACE VIEW job_costs AS {_job_costs_after()}")


def downgrade() -> None:
    op.execute("DROP VIEW job_costs")
    op.execute(f"CREATE VIEW job_costs AS {_job_costs_before()}")
    op.execute("DELETE FROM webhook_deliveries WHERE batch_id IS NOT NULL")
    op.drop_constraint(op.f("ck_webhook_deliveries_event_type"), "webhook_deliveries")
    op.create_check_constraint(
        op.f("ck_webhook_deliveries_event_type"),
        "webhook_deliveries",
        _in("event_type", JOB_EVENTS),
    )
    op.drop_constraint(op.f("ck_webhook_deliveries_subject"), "webhook_deliveries")
    op.drop_index(
        op.f("ix_webhook_deliveries_batch_id_event_type"), table_name="webhook_deliveries"
    )
    op.drop_constraint(
        op.f("fk_webhook_deliveries_batch_id_batches"), "webhook_deliveries", type_="foreignkey"
    )
    op.drop_column("webhook_deliveries", "batch_id")
    op.alter_column("webhook_deliveries", "job_id", existing_type=sa.Uuid(), nullable=False)
    op.drop_index("ix_jobs_batch_id_enqueue_seq", table_name="jobs")
    op.drop_index("ix_jobs_batch_id_status", table_name="jobs")
    op.drop_index("uq_jobs_batch_id_custom_id", table_name="jobs")
    op.drop_constraint(op.f("fk_jobs_batch_id_batches"), "jobs", type_="foreignkey")
    op.drop_column("jobs", "custom_id")
    op.drop_column("jobs", "batch_id")
    op.drop_table("batches")
    op.drop_table("batch_file_chunks")
    op.drop_index(op.f("ix_batch_files_tenant_created_at"), table_name="batch_files")
    op.drop_table("batch_files")

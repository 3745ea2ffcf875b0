"""surfaces: which ezrouter surface, thinking blocks, cache-write tokens and price

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 17:00:00

- ``jobs.surface`` (text, ``openai`` | ``anthropic`` | ``auto``, default ``auto``): the
  surface the job asked for; ``job_attempts.surface`` (``openai`` | ``anthropic``, NULL when
  no call was made): the surface each gateway call went to.
- ``messages.thinking_blocks`` (jsonb): an Anthropic-surface reply's thinking blocks with
  their signatures, sent back on the next turn.
- ``token_usage.cache_write_tokens`` (integer, default 0): prompt tokens written to the
  prompt cache, a part of ``uncached_prompt_tokens``; ``model_prices.cache_write_input_per_mtok``
  (numeric, NULL = the plain input price): what writing them costs.
- The views gain columns at their end (existing columns unchanged): ``cache_write_tokens``
  in ``usage_daily``, ``usage_monthly``, ``conversation_usage`` and ``job_costs``, and
  ``surface`` in ``job_costs``. ``ix_token_usage_utc_day`` is rebuilt to cover
  ``cache_write_tokens``, so the views stay index-only.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _usage_migration() -> ModuleType:
    # The views as 0003 created them: this migration appends to them, and restores them.
    spec = importlib.util.spec_from_file_location(
        "_ezq_0003", Path(__file__).with_name("0003_usage.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_APPENDED = {
    "usage_daily": ",\n               sum(u.cache_write_tokens) AS cache_write_tokens",
    "usage_monthly": ",\n               sum(u.cache_write_tokens) AS cache_write_tokens",
    "conversation_usage": ",\n               sum(u.cache_write_tokens) AS cache_write_tokens",
    "job_costs": ",\n               u.cache_write_tokens,\n               j.surface",
}


def _with_appended(name: str, body: str) -> str:
    # Each 0003 body is "SELECT <columns> FROM ..."; the new columns go after the last one.
    head, sep, tail = body.partition("\n        FROM ")
    return head + _APPENDED[name] + sep + tail


def _rebuild_utc_day_index(include: list[str]) -> None:
    op.drop_index("ix_token_usage_utc_day", table_name="token_usage")
    op.create_index(
        "ix_token_usage_utc_day",
        "token_usage",
        [sa.text("((created_at AT TIME ZONE 'UTC')::date)"), "tenant", "model"],
        unique=False,
        postgresql_include=include,
    )


def upgrade() -> None:
    usage = _usage_migration()
    op.add_column("jobs", sa.Column("surface", sa.Text(), server_default="auto", nullable=False))
    op.create_check_constraint(
        op.f("ck_jobs_surface"), "jobs", "surface IN ('openai', 'anthropic', 'auto')"
    )
    op.add_column("job_attempts", sa.Column("surface", sa.Text(), nullable=True))
    op.create_check_constraint(
        op.f("ck_job_attempts_surface"), "job_attempts", "surface IN ('openai', 'anthropic')"
    )
    op.add_column(
        "messages",
        sa.Column("thinking_blocks", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    )
    op.add_column(
        "token_usage",
        sa.Column("cache_write_tokens", sa.Integer(), server_default="0", nullable=False),
    )
    op.add_column(
        "model_prices",
        sa.Column("cache_write_input_per_mtok", sa.Numeric(20, 10), nullable=True),
    )
    op.create_check_constraint(
        op.f("ck_model_prices_cache_write_input_per_mtok"),
        "model_prices",
        "cache_write_input_per_mtok >= 0",
    )
    _rebuild_utc_day_index([*usage.USAGE_INDEX_INCLUDE, "cache_write_tokens"])
    for name, body in usage.VIEWS.items():
        op.execute(f"CREATE OR REPLACE VIEW {name} AS {_with_appended(name, body)}")


def downgrade() -> None:
    usage = _usage_migration()
    for name in reversed(usage.VIEWS):
        op.execute(f"DROP VIEW {name}")
    for name, body in usage.VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {body}")
    _rebuild_utc_day_index(usage.USAGE_INDEX_INCLUDE)
    op.drop_constraint(
        op.f("ck_model_prices_cache_write_input_per_mtok"), "model_prices", type_="check"
    )
    op.drop_column("model_prices", "cache_write_input_per_mtok")
    op.drop_column("token_usage", "cache_write_tokens")
    op.drop_column("messages", "thinking_blocks")
    op.drop_constraint(op.f("ck_job_attempts_surface"), "job_attempts", type_="check")
    op.drop_column("job_attempts", "surface")
    op.drop_constraint(op.f("ck_jobs_surface"), "jobs", type_="check")
    op.drop_column("jobs", "surface")

"""messages keep an assistant message's refusal and reasoning_content

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07 06:00:00

Changes, as public interface (README "SQL tables"):
- ``messages`` gains ``refusal`` (text) and ``reasoning_content`` (text): the fields of
  that name on an assistant message a producer sent, NULL otherwise.
- ``ezq_claim_job``'s history rows (its ``history`` column: one JSON array a message)
  carry them too, last: ``[role, content, name, tool_calls, tool_call_id,
  thinking_blocks, refusal, reasoning_content]``. Its return type is unchanged.

Why: both fields are accepted on assistant messages and sent to the gateway as given, but
the history dropped them, so the next turn of the conversation sent that message without
them. Existing rows keep NULL (what was dropped is not known).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD_ROW = """jsonb_build_array(
               m.role, coalesce(m.content_parts, to_jsonb(m.content)), m.name, m.tool_calls,
               m.tool_call_id, m.thinking_blocks)"""
_NEW_ROW = """jsonb_build_array(
               m.role, coalesce(m.content_parts, to_jsonb(m.content)), m.name, m.tool_calls,
               m.tool_call_id, m.thinking_blocks, m.refusal, m.reasoning_content)"""


def _claim_0018() -> str:
    """Migration 0018's function, as it was (read from that migration)."""
    path = Path(__file__).with_name("0018_claim_callback.py")
    spec = importlib.util.spec_from_file_location("ezq_migration_0018", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.CLAIM)


def _replaceable(claim: str) -> str:
    return claim.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def upgrade() -> None:
    op.add_column("messages", sa.Column("refusal", sa.Text(), nullable=True))
    op.add_column("messages", sa.Column("reasoning_content", sa.Text(), nullable=True))
    claim = _claim_0018()
    assert claim.count(_OLD_ROW) == 1, "migration 0018's history row is not as expected"
    op.execute(_replaceable(claim.replace(_OLD_ROW, _NEW_ROW)))


def downgrade() -> None:
    op.execute(_replaceable(_claim_0018()))
    op.drop_column("messages", "reasoning_content")
    op.drop_column("messages", "refusal")

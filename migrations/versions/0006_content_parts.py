"""messages: keep content parts as sent (messages.content_parts)

Revision ID: 0006
Revises: 0003
Create Date: 2026-12-01 16:20:00

A message sent as an array of content parts (text, image_url, input_audio, file) keeps
the array, exactly as sent, in the new ``content_parts`` jsonb column; ``content`` then
holds the text of its text parts joined by newlines, so SQL that reads ``content`` as
text keeps working. String messages are unchanged (``content_parts`` NULL). No view
changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable without a default: adding it does not rewrite the table.
    op.add_column(
        "messages",
        sa.Column("content_parts", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    )


def downgrade() -> None:
    op.drop_column("messages", "content_parts")

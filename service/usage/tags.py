"""Which metadata tag keys the tag rollup ``usage_rollup_tags`` sums (migration 0016).

Adding a key fills its rollup from ``token_usage`` in the same transaction, while usage
writers wait; from then on the triggers on ``token_usage`` keep it exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.orm import Session

from service.errors import InvalidRequest

MAX_TAG_KEY_LENGTH = 200


@dataclass(frozen=True, slots=True)
class RolledUpKey:
    key: str
    added_at: datetime
    rows: int


def check_tag_key(key: str) -> str:
    if not key or len(key) > MAX_TAG_KEY_LENGTH or key != key.strip():
        raise InvalidRequest(
            "KEY", f"must be 1 to {MAX_TAG_KEY_LENGTH} characters, without surrounding spaces"
        )
    return key


def add_tag_key(session: Session, key: str) -> bool:
    """Roll ``key`` up; False when it already was."""
    known = session.execute(
        text("SELECT EXISTS (SELECT FROM usage_rollup_tag_keys WHERE key = :k)"),
        {"k": check_tag_key(key)},
    ).scalar_one()
    session.execute(text("SELECT usage_rollup_tag_add(:k)"), {"k": key})
    return not known


def drop_tag_key(session: Session, key: str) -> bool:
    """Stop rolling ``key`` up and delete its rows; False when it was not rolled up."""
    known = session.execute(
        text("SELECT EXISTS (SELECT FROM usage_rollup_tag_keys WHERE key = :k)"), {"k": key}
    ).scalar_one()
    session.execute(text("SELECT usage_rollup_tag_drop(:k)"), {"k": key})
    return bool(known)


def list_tag_keys(session: Session) -> list[RolledUpKey]:
    rows = session.execute(
        text(
            "SELECT k.key, k.added_at,"
            " (SELECT count(*) FROM usage_rollup_tags t WHERE t.tag_key = k.key)"
            " FROM usage_rollup_tag_keys k ORDER BY k.key"
        )
    ).all()
    return [RolledUpKey(key, added_at, count) for key, added_at, count in rows]

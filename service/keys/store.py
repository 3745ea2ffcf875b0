"""The ``api_keys`` table: create, list, revoke, and find the key a request presents.

The caller owns the transaction. A key is returned in clear once, by ``create_key``; the
table holds its SHA-256 and the few characters ``ezq keys list`` shows.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from service.db.models import ApiKey
from service.errors import ApiKeyNotFound, InvalidRequest
from service.keys.material import key_hash, looks_like_key, new_key, shown_prefix
from service.keys.principal import Principal
from service.validation import checked_tenant


def check_tenant(tenant: str) -> str:
    """A tenant name as every tenant is checked (``checked_tenant``), named ``--tenant``."""
    checked = checked_tenant(tenant, "--tenant")
    assert checked is not None  # a string is never None
    return checked


def create_key(
    session: Session,
    *,
    tenants: Sequence[str] = (),
    admin: bool = False,
    name: str | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Store a new key and return its row and the key itself (shown once, never again)."""
    if admin and tenants:
        raise InvalidRequest("--admin", "an admin key acts for every tenant; drop --tenant")
    if not admin and not tenants:
        raise InvalidRequest("--tenant", "give at least one tenant, or --admin")
    bound = sorted({check_tenant(t) for t in tenants})
    key = new_key()
    row = ApiKey(
        name=name,
        prefix=shown_prefix(key),
        key_hash=key_hash(key),
        tenants=bound,
        admin=admin,
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    return row, key


def list_keys(session: Session) -> list[ApiKey]:
    """Every key, newest first (revoked and expired ones too, marked by their columns)."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at.desc())))


# How ``ezq keys list`` ends a shown prefix, and its ASCII spelling; a prefix pasted with
# either is taken as the prefix itself.
SHOWN_ELLIPSES = ("…", "...")


def _shown_prefix(ref: str) -> str:
    for ellipsis in SHOWN_ELLIPSES:
        if ref.endswith(ellipsis):
            return ref[: -len(ellipsis)]
    return ref


def revoke_key(session: Session, ref: str) -> ApiKey:
    """Revoke the key with id (or shown prefix, as ``ezq keys list`` shows it, ``…``
    included) ``ref``; revoking twice is a no-op."""
    ref = ref.strip()
    try:
        condition = ApiKey.id == uuid.UUID(ref)
        by_id = True
    except ValueError:
        condition = ApiKey.prefix == _shown_prefix(ref)
        by_id = False
    rows = list(session.scalars(select(ApiKey).where(condition).with_for_update()))
    if len(rows) != 1:
        if rows:
            raise InvalidRequest("ID", f"{ref!r} matches {len(rows)} keys; give the id")
        if by_id:
            raise ApiKeyNotFound(ref)
        raise ApiKeyNotFound(
            f"{ref} (give a key's id, or its prefix as `ezq keys list` shows it: ezq_…)"
        )
    row = rows[0]
    if row.revoked_at is None:
        session.execute(update(ApiKey).where(ApiKey.id == row.id).values(revoked_at=func.now()))
        session.refresh(row)
    return row


def still_valid(session: Session, principal: Principal, *, tenant: str | None) -> bool:
    """Whether the key behind ``principal`` still works (not revoked, not expired) and
    still sees rows of ``tenant`` (its ``tenants`` or ``admin`` may have been changed
    since, by ``UPDATE api_keys``): for a request that outlasts its start, an event
    stream of a job of ``tenant``. EZQ_API_TOKENS tokens (``env:N``) change only with a
    restart."""
    if principal.key_id.startswith("env:"):
        return True
    row = session.execute(
        select(ApiKey.tenants, ApiKey.admin).where(
            ApiKey.id == uuid.UUID(principal.key_id),
            ApiKey.revoked_at.is_(None),
            or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > func.now()),
        )
    ).first()
    if row is None:
        return False
    # As ``principal_for`` reads the key: an admin key sees every tenant, another only its own.
    return bool(row.admin) or (tenant is not None and tenant in (row.tenants or ()))


def principal_for(session: Session, key: str) -> Principal | None:
    """The caller a presented key stands for, or None if it is unknown, revoked or expired.

    Looked up on every request, so a revocation applies to the next request.
    """
    if not looks_like_key(key):
        return None
    row = session.execute(
        select(ApiKey.id, ApiKey.tenants, ApiKey.admin).where(
            ApiKey.key_hash == key_hash(key),
            ApiKey.revoked_at.is_(None),
            or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > func.now()),
        )
    ).first()
    if row is None:
        return None
    return Principal(str(row.id), None if row.admin else frozenset(row.tenants))

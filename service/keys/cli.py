"""``ezq keys create / list / revoke``: API keys for the HTTP interface.

Only click and the shared output options are imported at module level, so ``ezq --help``
stays cheap.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

from service.ops.output import format_option


def _record(row: Any) -> dict[str, Any]:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    if row.revoked_at is not None:
        state = "revoked"
    elif row.expires_at is not None and row.expires_at <= now:
        state = "expired"
    else:
        state = "active"
    return {
        "id": str(row.id),
        "name": row.name,
        "prefix": row.prefix,
        "tenants": None if row.admin else list(row.tenants),
        "admin": row.admin,
        "status": state,
        "created_at": row.created_at.isoformat(),
        "expires_at": row.expires_at.isoformat() if row.expires_at else None,
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
    }


@click.group("keys")
def keys() -> None:
    """API keys for the HTTP interface, bound to tenants (or admin keys)."""


@keys.command("create")
@click.option("--tenant", "tenants", multiple=True, metavar="T", help="A tenant (repeatable).")
@click.option("--admin", is_flag=True, help="An admin key: every tenant, for operators.")
@click.option("--name", help="What the key is for, shown by `ezq keys list`.")
@click.option(
    "--expires",
    metavar="DATE",
    help="YYYY-MM-DD (midnight UTC) or an ISO 8601 time after which the key stops working.",
)
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
def keys_create(
    tenants: tuple[str, ...], admin: bool, name: str | None, expires: str | None, fmt: str
) -> None:
    """Create a key and print it once (only its hash is stored); details go to stderr."""
    from datetime import UTC, datetime

    from service.db.session import transaction
    from service.errors import InvalidRequest
    from service.keys.store import create_key
    from service.usage.periods import parse_instant

    expires_at = parse_instant(expires, "--expires") if expires else None
    if expires_at is not None and expires_at <= datetime.now(UTC):
        raise InvalidRequest("--expires", f"{expires} is not in the future")
    with transaction() as session:
        row, key = create_key(
            session, tenants=tenants, admin=admin, name=name, expires_at=expires_at
        )
        record = _record(row)
    if fmt == "json":
        click.echo(json.dumps({**record, "key": key}, indent=2, ensure_ascii=False))
        return
    click.echo(key)
    scope = "admin (every tenant)" if admin else "tenants " + ", ".join(record["tenants"])
    until = f", expires {record['expires_at']}" if expires_at else ""
    click.echo(f"created key {record['id']} for {scope}{until}; it is shown only now", err=True)


COLUMNS = (
    "id",
    "name",
    "prefix",
    "tenants",
    "admin",
    "status",
    "created_at",
    "expires_at",
    "revoked_at",
)


def _keys_table(rows: Sequence[dict[str, Any]]) -> Any:
    """Id (never wrapped), shown prefix, status, tenants and name, in the terminal's width."""
    from service.ops import output

    tenants, name = output.share(output.console().width, (36, 13, 7), (3, 2))
    table = output.table(
        ("ID", output.ID),
        ("PREFIX", {"width": 13}),
        ("STATUS", {"width": 7}),
        ("TENANTS", {"width": tenants}),
        ("NAME", {"width": name}),
    )
    for r in rows:
        table.add_row(
            r["id"],
            r["prefix"] + "…",
            r["status"],
            "(admin)" if r["admin"] else ", ".join(r["tenants"]),
            r["name"] or "",
        )
    return table


@keys.command("list")
@format_option
def keys_list(fmt: str) -> None:
    """Every key: id, name, shown prefix, tenants, status, dates. Never the key itself.

    The table shows id, prefix, status, tenants and name; JSON and CSV every column.
    """
    from service.db.session import transaction
    from service.keys.store import list_keys
    from service.ops.output import emit

    with transaction() as session:
        records = [_record(row) for row in list_keys(session)]
    emit(records, COLUMNS, fmt, _keys_table, empty="no API keys")


@keys.command("revoke")
@click.argument("key_id", metavar="ID")
def keys_revoke(key_id: str) -> None:
    """Revoke key ID (its id, or the prefix `ezq keys list` shows); effective at once."""
    from service.db.session import transaction
    from service.keys.store import revoke_key

    with transaction() as session:
        row = revoke_key(session, key_id)
        record = _record(row)
    click.echo(f"revoked key {record['id']} at {record['revoked_at']}", err=True)

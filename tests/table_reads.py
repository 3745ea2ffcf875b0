"""What a connection's transaction has read of a table so far, from
``pg_stat_xact_user_tables``: for tests that show a statement reads the rows it is about.
Postgres adds what earlier transactions read until it reports them, so a test takes the
difference of two readings within one transaction."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Connection

_READ = text(
    "SELECT seq_scan, seq_tup_read + coalesce(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables"
    " WHERE relname = :table"
)


def whole_table_reads(conn: Connection, table: str = "jobs") -> int:
    """Sequential scans of ``table``."""
    return int(conn.execute(_READ, {"table": table}).one()[0])


def rows_read(conn: Connection, table: str = "jobs") -> int:
    """Rows of ``table`` read: by whole-table reads, and fetched through an index (an
    index-only read of a page not yet marked all-visible fetches its row too)."""
    return int(conn.execute(_READ, {"table": table}).one()[1])

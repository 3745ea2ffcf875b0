"""Counting what a process sends to Postgres: statements, through SQLAlchemy or on the
driver's connection (``service.db.driver``), and transactions (each a BEGIN and a COMMIT
more; a statement on an autocommit connection is none)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, event


@dataclass(slots=True)
class Counts:
    statements: int = 0
    transactions: int = 0


def count_statements(engine: Engine) -> Counts:
    """Count from now on what ``engine``'s connections and the driver's statements send."""
    from service.db import driver

    counts = Counts()

    def statement(*_: Any) -> None:
        counts.statements += 1

    def transaction(conn: Any) -> None:
        if not conn.connection.driver_connection.autocommit:
            counts.transactions += 1

    run_on_driver = driver.rows

    def on_driver(*args: Any) -> Any:
        counts.statements += 1
        return run_on_driver(*args)

    driver.rows = on_driver  # type: ignore[assignment]
    event.listen(engine, "before_cursor_execute", statement)
    event.listen(engine, "begin", transaction)
    return counts

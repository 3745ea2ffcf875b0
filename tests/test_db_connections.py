"""Pooled connections the server has closed are never handed out."""

from __future__ import annotations

import select
from typing import Any

from sqlalchemy import text

from service.db.session import get_engine, transaction
from tests.conftest import sql
from tests.test_faults import wait_until


def _backend_pid() -> int:
    with transaction() as session:
        return int(session.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _readable(connection: Any) -> bool:
    poller = select.poll()
    poller.register(connection.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def test_a_connection_whose_backend_was_terminated_is_replaced_at_checkout(
    service_env: dict[str, str],
) -> None:
    """The server ends the pooled connection's backend (as a restart does); the next
    transaction gets a new connection and succeeds, with no error and no retry."""
    engine = get_engine()
    engine.dispose()  # one pooled connection: the one checked out below
    first = _backend_pid()
    with engine.connect() as probe:
        pooled = probe.connection.dbapi_connection
    assert pooled is not None
    # From a connection of its own, not one of the pool's.
    sql("SELECT pg_terminate_backend(:pid)", pid=first, database=service_env["DATABASE_URL"])
    # The server's goodbye has reached the pooled connection's socket.
    wait_until(lambda: _readable(pooled), timeout=10, what="the terminated backend's socket")
    second = _backend_pid()
    assert second != first


def test_a_healthy_pooled_connection_is_reused(service_env: dict[str, str]) -> None:
    """The check costs no round trip and keeps live connections: the same backend serves
    transactions one after another."""
    get_engine().dispose()
    assert _backend_pid() == _backend_pid()

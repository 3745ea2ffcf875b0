"""Engines and sessions. One engine per process and URL, created on first use."""

from __future__ import annotations

import select
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import PoolProxiedConnection

from service import constants as c
from service.config import Settings, get_settings

# The database cannot be used now: unreachable, or every pooled connection busy for longer
# than the pool's timeout. Both pass; a caller waits or delivers the job again later.
UNAVAILABLE = (OperationalError, PoolTimeout)


def unavailable_because(exc: Exception) -> str:
    """What made the database unavailable, in a word: the driver's error class, or the pool's."""
    return type(getattr(exc, "orig", None) or exc).__name__


def refusal(exc: BaseException) -> str | None:
    """What Postgres refused, without the values: the driver's error class and SQLSTATE
    (the message's DETAIL, ``Failing row contains (…)``, can quote a prompt or a reply).
    None for an exception that is not the database's."""
    orig = getattr(exc, "orig", None)
    if not isinstance(orig, psycopg.Error):
        return None
    return f"{type(orig).__name__} (SQLSTATE {orig.sqlstate or 'unknown'})"


@dataclass(frozen=True, slots=True)
class DriverConnection:
    """A pooled connection in autocommit mode, for statements run on the driver directly
    (``service.db.driver``): what ``autocommit`` gives. ``engine`` is its pool's."""

    engine: Engine
    pooled: PoolProxiedConnection


# What runs a statement: a session in a transaction, a connection, or (for the driver's
# statements only) an autocommit one.
Executor = Session | Connection | DriverConnection

_lock = threading.Lock()
_factories: dict[str, sessionmaker[Session]] = {}


# Threads of this process that may each hold a connection, when it is not a worker (whose
# job threads are ``EZQ_WORKER_CONCURRENCY``): set by the HTTP interface at its start.
_threads: int | None = None


def size_pools_for(threads: int) -> None:
    """Size this process's pools for ``threads`` threads that may each hold a connection at
    once, instead of a worker's ``EZQ_WORKER_CONCURRENCY``: those built from now on (an
    engine already built keeps its size, though ``pool_sizes`` answers the new one)."""
    global _threads
    _threads = threads


def pool_sizes(settings: Settings) -> tuple[int, int]:
    """How many database connections a process opens when it starts, and the most it holds:
    ``EZQ_DB_POOL_SIZE`` and ``DB_POOL_BURST`` more, each at most the process's concurrency
    (a worker's job threads, each holding one connection at a time, or the threads given to
    ``size_pools_for``), and ``DB_POOL_MAINTENANCE`` more for the process's own threads.
    Without those, a worker of concurrency 1 had one connection: its sweep held it for its
    lock and waited for a second one for its first transaction, and every thread of the
    process waited with it until the pool's timeout (30 s)."""
    concurrency = settings.ezq_worker_concurrency if _threads is None else _threads
    steady = min(settings.ezq_db_pool_size, concurrency)
    return steady, min(steady + c.DB_POOL_BURST, concurrency) + c.DB_POOL_MAINTENANCE


def _make_engine(url: str, size: int | None = None) -> Engine:
    # Worker threads hold a connection only for short transactions, never across a gateway
    # call, so a modest pool serves many threads: the others wait their turn for a
    # connection (a few milliseconds) rather than open one each.
    most = pool_sizes(get_settings())[1] if size is None else size
    engine = create_engine(
        url,
        # A connection opened for a burst is kept, not closed when it is handed back (what
        # ``max_overflow`` does when the pool holds its ``pool_size``): under a steady
        # load of more threads than connections, closing them opened a new backend every
        # 15 to 30 jobs, and each new backend planned the claim's ranking afresh (six
        # plans before Postgres keeps one, 5 to 12 ms each): at 64 threads, 200 to 420
        # backends and 8 to 18 s of planning per 6,000 jobs, against 32 and 1.3 s kept.
        pool_size=most,
        max_overflow=0,
        pool_timeout=c.DB_POOL_TIMEOUT_S,
        pool_recycle=1800,
        # The connection returned last is handed out next, so that a few connections do
        # the work and stay warm (their backends' catalog caches and plans, psycopg's
        # prepared statements) while the others idle: first-in-first-out cycled every
        # job through all of them, and each paid its cold start. At 80 jobs/s for 4 s against
        # a worker just started (and warmed up), enqueue to the gateway's first byte had a
        # p50 / p99 of 10.7 / 85 ms first-in-first-out, 6.0 / 37 ms last-in-first-out.
        pool_use_lifo=True,
        # A refused statement's error never lists its values: they hold prompts, replies
        # and producers' metadata (the server's own DETAIL may still quote a row: what is
        # logged or stored of a refusal goes through ``refusal``).
        hide_parameters=True,
    )
    event.listen(engine, "checkout", _refuse_closed_connection)
    return engine


def _refuse_closed_connection(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """What ``pool_pre_ping`` is for, without its round trip on every checkout.

    A connection the server has closed (a restart, a terminated backend) has something to
    read on its socket: the server's goodbye or the end of the stream. An idle connection
    of ours has nothing to read, so anything there means it is not to be used: the pool
    discards it and checks out another, or connects anew (``DisconnectionError``).
    """
    if getattr(dbapi_connection, "closed", False) or getattr(dbapi_connection, "broken", False):
        raise DisconnectionError("the connection is closed")
    poller = select.poll()
    poller.register(dbapi_connection.fileno(), select.POLLIN)
    if poller.poll(0):
        raise DisconnectionError("the server closed the connection")


def session_factory(url: str | None = None) -> sessionmaker[Session]:
    """The process's session factory for ``url`` (default: ``DATABASE_URL``)."""
    key = url or get_settings().database_url
    factory = _factories.get(key)
    if factory is None:
        with _lock:
            factory = _factories.get(key)
            if factory is None:
                factory = sessionmaker(_make_engine(key), expire_on_commit=False)
                _factories[key] = factory
    return factory


_own_factories: dict[tuple[str, str], sessionmaker[Session]] = {}


def own_connection(purpose: str) -> sessionmaker[Session]:
    """A session factory on one connection of its own, for ``purpose`` (a thread's name),
    outside the process's pool: for a thread that must never wait behind the job threads
    for a connection. The heartbeat is one: a lease it cannot renew while claims hold every
    pooled connection (waiting on a lock, say) expires, and the sweep of another worker
    takes the job over while its call still runs."""
    key = (get_settings().database_url, purpose)
    factory = _own_factories.get(key)
    if factory is None:
        with _lock:
            factory = _own_factories.get(key)
            if factory is None:
                factory = sessionmaker(_make_engine(key[0], size=1), expire_on_commit=False)
                _own_factories[key] = factory
    return factory


def get_engine(url: str | None = None) -> Engine:
    engine = session_factory(url).kw["bind"]
    assert isinstance(engine, Engine)
    return engine


@contextmanager
def transaction(url: str | None = None) -> Iterator[Session]:
    """A session inside one transaction: committed on success, rolled back on error."""
    with session_factory(url).begin() as session:
        yield session


def is_disconnect(engine: Engine, exc: psycopg.Error, driver: Any = None) -> bool:
    """Whether the driver's ``exc`` means the connection is lost, as SQLAlchemy judges it."""
    return bool(engine.dialect.is_disconnect(exc, driver, None))  # type: ignore[arg-type]


def sqlalchemy_error(
    engine: Engine, exc: psycopg.Error, sql: str | None, *, disconnected: bool
) -> Exception:
    """The exception SQLAlchemy raises for the driver's ``exc`` (``OperationalError`` for a
    lost or unreachable server), never with the statement's values: they hold prompts
    and replies."""
    return DBAPIError.instance(
        sql,
        None,
        exc,
        psycopg.Error,
        hide_parameters=True,
        connection_invalidated=disconnected,
        dialect=engine.dialect,
    )


@contextmanager
def autocommit(url: str | None = None) -> Iterator[DriverConnection]:
    """A pooled connection on which each statement commits by itself: for one statement
    that is atomic on its own, which then costs one round trip instead of three (no
    BEGIN, no COMMIT). Its statements run on the driver (``service.db.driver``).

    The pool's connection is taken as it is, without a SQLAlchemy ``Connection`` around
    it: building one, setting its isolation level and resetting it on return was about
    half of the checkout's CPU (22 against 13 µs), twice per job on the worker's path.
    """
    engine = get_engine(url)
    try:
        pooled = engine.raw_connection()
    except psycopg.Error as exc:
        # Raised as ``Engine.connect`` raises it, SQLAlchemy's, which is what callers
        # take for an outage (``UNAVAILABLE``).
        raise sqlalchemy_error(engine, exc, None, disconnected=is_disconnect(engine, exc)) from exc
    try:
        driver = pooled.driver_connection
        assert isinstance(driver, psycopg.Connection)
        # The driver's own switch, set back before the connection goes back to the pool
        # (whose next user may open a transaction). Neither costs a round trip: both are
        # allowed only outside a transaction, where an autocommit connection always is.
        driver.autocommit = True
        try:
            yield DriverConnection(engine, pooled)
        finally:
            # Unless the connection was lost and invalidated (the driver's error handling):
            # then the pool connects anew at its next checkout.
            if pooled.is_valid:
                try:
                    driver.autocommit = False
                except psycopg.Error:  # lost, unnoticed until now
                    pooled.invalidate()
    finally:
        pooled.close()


def dispose_engines() -> None:
    """Drop pooled connections (after a fork, or at shutdown)."""
    with _lock:
        for factory in (*_factories.values(), *_own_factories.values()):
            factory.kw["bind"].dispose()
        _factories.clear()
        _own_factories.clear()

"""Engines and sessions. One engine per process and URL, created on first use."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from service.config import get_settings

_lock = threading.Lock()
_factories: dict[str, sessionmaker[Session]] = {}


def _make_engine(url: str) -> Engine:
    settings = get_settings()
    # Worker threads hold a connection only for short transactions, never across a gateway
    # call, so a modest pool serves many threads.
    return create_engine(
        url,
        pool_size=min(10, settings.ezq_worker_concurrency),
        max_overflow=settings.ezq_worker_concurrency,
        pool_pre_ping=True,
        pool_recycle=1800,
    )


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


def get_engine(url: str | None = None) -> Engine:
    engine = session_factory(url).kw["bind"]
    assert isinstance(engine, Engine)
    return engine


@contextmanager
def transaction(url: str | None = None) -> Iterator[Session]:
    """A session inside one transaction: committed on success, rolled back on error."""
    with session_factory(url).begin() as session:
        yield session


def dispose_engines() -> None:
    """Drop pooled connections (after a fork, or at shutdown)."""
    with _lock:
        for factory in _factories.values():
            factory.kw["bind"].dispose()
        _factories.clear()

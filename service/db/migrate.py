"""Running Alembic from the package, so migrations work from any folder or a wheel."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config
from sqlalchemy import make_url
from sqlalchemy.engine import URL

from service.config import get_settings


def migrations_dir() -> Path:
    """Where the migration scripts are: inside an installed wheel, or the checkout."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "_migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("ezq migrations not found next to the service package")


def alembic_config(database_url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    # ConfigParser interpolation would choke on '%' in URL-encoded passwords.
    url = database_url or get_settings().database_url
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(revision: str = "head", database_url: str | None = None) -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(revision: str, database_url: str | None = None) -> None:
    command.downgrade(alembic_config(database_url), revision)


def current(database_url: str | None = None) -> None:
    command.current(alembic_config(database_url))


def create_database_if_missing(database_url: str | None = None) -> bool:
    """Create the target database when the server has none by that name.

    Returns True when it was created. Connects to the server's ``postgres`` database.
    """
    import psycopg
    from psycopg import sql

    url: URL = make_url(database_url or get_settings().database_url)
    name = url.database
    if not name:
        raise ValueError("DATABASE_URL names no database")
    admin = url.set(drivername="postgresql", database="postgres")
    conninfo = admin.render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists:
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return True


@contextmanager
def throwaway_database(admin_dsn: str, prefix: str = "ezq_scratch") -> Iterator[str]:
    """A new database migrated to head, dropped on exit; yields its SQLAlchemy URL.

    ``admin_dsn`` is a libpq URL of any database on the server, e.g. ``.../postgres``.
    """
    name = f"{prefix}_{secrets.token_hex(4)}"
    base = admin_dsn.split("://", 1)[1].rsplit("/", 1)[0]
    url = f"postgresql+psycopg://{base}/{name}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        upgrade("head", url)
        yield url
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            # FORCE ends the sessions still on it and drops it under one lock (Postgres 13
            # or later): terminated first and dropped after, a process still running on it
            # (a worker's pool, its heartbeat) reconnected in between, and the drop failed.
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

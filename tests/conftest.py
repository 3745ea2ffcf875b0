"""Fixtures: a throwaway database built by the migrations, a real Redis queue, the fake
gateway as a real HTTP server, and a real ``ezq worker`` subprocess."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
ADMIN_DSN = os.environ.get("EZQ_TEST_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("EZQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# Key-shaped on purpose, so that the redaction patterns and the exact-value filter are both
# exercised, and unique so that finding it anywhere proves a leak.
API_KEY = "sk-ezq-test-" + secrets.token_hex(16)


def _require(service: str, check: Callable[[], object]) -> None:
    try:
        check()
    except Exception as exc:  # any failure means the service is not usable
        pytest.exit(f"{service} is not reachable for the tests: {exc}", returncode=3)


def _database_exists_check() -> None:
    with psycopg.connect(ADMIN_DSN, connect_timeout=3) as conn:
        conn.execute("SELECT 1")


@pytest.fixture(scope="session")
def test_ids() -> dict[str, str]:
    suffix = secrets.token_hex(4)
    return {"db": f"ezq_test_{suffix}", "queue": f"ezq-test-{suffix}"}


@pytest.fixture(scope="session")
def database_url(test_ids: dict[str, str]) -> Iterator[str]:
    """A fresh database, migrated to head by the real ``ezq db upgrade``, dropped after."""
    _require("PostgreSQL", _database_exists_check)
    name = test_ids["db"]
    url = ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"
    env = {**os.environ, "DATABASE_URL": url}
    subprocess.run([sys.executable, "-m", "service", "db", "upgrade"], check=True, env=env, cwd="/")
    yield url
    forget_results(url)
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def forget_results(database: str) -> None:
    """Delete the Celery results and live token streams this session's jobs left in Redis
    (keyed by job id)."""
    try:
        with psycopg.connect(database, connect_timeout=3) as conn:
            ids = [row[0] for row in conn.execute("SELECT id FROM jobs")]
    except psycopg.Error:
        return  # the database was never migrated: no jobs, no results
    client = redis.Redis.from_url(REDIS_URL)
    for start in range(0, len(ids), 1000):
        client.delete(*(f"celery-task-meta-{i}" for i in ids[start : start + 1000]))
        client.delete(*(f"ezq:live:{i}" for i in ids[start : start + 1000]))


def drop_queue(queue: str) -> None:
    """Delete a test queue and the routing keys kombu keeps for it in Redis."""
    redis.Redis.from_url(REDIS_URL).delete(
        queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}"
    )


@pytest.fixture
def own_database() -> Iterator[tuple[str, Any]]:
    """A database of the test's own, migrated to head and dropped after it: its URL and an
    engine on it. For tests whose rows no worker of the session may see, or which depend on
    database-wide state (whether any flow limit exists)."""
    from sqlalchemy import create_engine

    from service.db.migrate import throwaway_database

    with throwaway_database(ADMIN_DSN, prefix="ezq_test_own") as url:
        engine = create_engine(url)
        try:
            yield url, engine
        finally:
            engine.dispose()


@pytest.fixture
def own_database_settings(
    own_database: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, Any]]:
    """``own_database``, with this process's settings (its producer calls, its engines)
    pointed at it (more settings: ``monkeypatch.setenv``, then ``reset_settings``)."""
    url, engine = own_database
    monkeypatch.setenv("DATABASE_URL", url)
    reset_settings()
    try:
        yield url, engine
    finally:
        monkeypatch.undo()
        reset_settings()


@pytest.fixture(scope="session")
def fake_gateway_server() -> Iterator[Any]:
    from service.fake_gateway import FakeGateway

    with FakeGateway(api_keys={API_KEY}).start() as gateway:
        yield gateway


@pytest.fixture
def fake_gateway(fake_gateway_server: Any) -> Iterator[Any]:
    """The running fake ezrouter, with no faults and no recorded requests."""
    fake_gateway_server.reset()
    yield fake_gateway_server
    fake_gateway_server.reset()


@pytest.fixture(scope="session")
def service_env(
    database_url: str, test_ids: dict[str, str], fake_gateway_server: Any
) -> dict[str, str]:
    """The environment of the test worker, and of this process's producer calls."""
    _require("Redis", lambda: redis.Redis.from_url(REDIS_URL, socket_timeout=3).ping())
    return {
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": REDIS_URL,
        "EZQ_QUEUE": test_ids["queue"],
        "EZROUTER_BASE_URL": fake_gateway_server.url,
        "EZROUTER_API_KEY": API_KEY,
        "EZQ_MAX_ATTEMPTS": "3",
        "EZQ_RETRY_BACKOFF_BASE": "0.05",
        "EZQ_RETRY_BACKOFF_MAX": "0.2",
        "EZQ_GATEWAY_CONNECT_TIMEOUT": "2",
        "EZQ_GATEWAY_READ_TIMEOUT": "1.5",
        "EZQ_GATEWAY_ATTEMPT_DEADLINE": "4",
        "EZQ_WORKER_CONCURRENCY": "8",
        "EZQ_LOG_LEVEL": "DEBUG",
        # Recovery at test speed: leases renewed every second, a sweep every second.
        "EZQ_LEASE_SECONDS": "6",
        "EZQ_HEARTBEAT_INTERVAL": "1",
        "EZQ_SWEEP_INTERVAL": "1",
        "EZQ_REDISPATCH_AFTER": "5",
        # Flow control's rate window, the same for every worker on the database (any of
        # them may run a throttled job once it is due): short, so rate tests are quick.
        "EZQ_FLOW_WINDOW": "2",
    }


@pytest.fixture(autouse=True)
def _short_claims_open(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with first turns' short claim open: a decline pauses it for this
    process (``service.flow.admission``), and a pause must not reach the next test."""
    from service.flow import admission

    monkeypatch.setattr(admission, "_short_claims", admission._Pause())


@pytest.fixture(scope="session", autouse=True)
def _producer_settings(request: pytest.FixtureRequest) -> Iterator[None]:
    """Point this process's settings at the test services, for tests that need them."""
    needs_services = any(
        "service_env" in item.fixturenames or "worker" in item.fixturenames
        for item in request.session.items
    )
    if not needs_services:
        yield
        return
    env = request.getfixturevalue("service_env")
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    _reset_settings()
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _reset_settings()


def _reset_settings() -> None:
    reset_settings()


def reset_settings() -> None:
    """Make this process follow the current environment: settings, database engines, and
    the Celery app's broker connections (kept from its first publish, so without this a
    test that switches brokers in-process would still publish to the first one)."""
    from kombu import pools as kombu_pools

    from service.config import get_settings
    from service.db.session import dispose_engines
    from service.worker.app import app, celery_config

    get_settings.cache_clear()
    dispose_engines()
    # kombu keeps one connection pool and one producer pool per broker URL in a registry of
    # its own, which the app's pool is an entry of: closing that entry alone would leave
    # it there, closed, for the next publish to the same URL. Reset the whole registry.
    kombu_pools.reset()
    app._pool = None
    app.amqp._producer_pool = None
    app._backend_cache = None  # the result backend, made again on first use
    with contextlib.suppress(AttributeError):
        del app._local.backend
    app.conf.update(celery_config())


class WorkerProcess:
    """A running ``ezq worker`` subprocess and its log."""

    def __init__(self, env: dict[str, str], log_path: Path, extra_args: list[str]) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "worker", *extra_args],
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd="/",
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log()}")
            if " ready." in self.log():
                return
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._log.close()


@pytest.fixture(scope="session")
def worker(
    service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """One real Celery worker for the session, consuming the test queue."""
    drop_queue(service_env["EZQ_QUEUE"])
    process = WorkerProcess(service_env, tmp_path_factory.mktemp("worker") / "worker.log", [])
    yield process
    process.stop()
    # Duplicate and delayed messages the tests left behind go with the test queue.
    drop_queue(service_env["EZQ_QUEUE"])


@pytest.fixture
def worker_factory(
    service_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    """Start extra workers with their own settings (own queue); stopped after the test."""
    started: list[WorkerProcess] = []
    queues: set[str] = set()

    def start(*, env: dict[str, str] | None = None, args: list[str] | None = None) -> WorkerProcess:
        merged = {**service_env, **(env or {})}
        queues.add(merged["EZQ_QUEUE"])
        process = WorkerProcess(merged, tmp_path / f"worker-{len(started)}.log", args or [])
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
    for queue in queues - {service_env["EZQ_QUEUE"]}:
        drop_queue(queue)


@pytest.fixture
def own_queue(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A queue of the test's own for this process's producer (and the workers it starts);
    deleted afterwards."""
    from service.config import get_settings

    queue = f"ezq-own-{secrets.token_hex(4)}"
    monkeypatch.setenv("EZQ_QUEUE", queue)
    get_settings.cache_clear()
    yield queue
    monkeypatch.undo()
    get_settings.cache_clear()
    drop_queue(queue)


def wait_for_job(job_id: uuid.UUID | str, timeout: float = 30.0) -> dict[str, Any]:
    """Poll the database until the job ends; return its JSON view."""
    from service.producer import get_job

    deadline = time.monotonic() + timeout
    while True:
        job = get_job(job_id)
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['status']} after {timeout}s: {job}")
        time.sleep(0.05)


def sql(query: str, *, database: str | None = None, **params: Any) -> list[tuple[Any, ...]]:
    """Run a query against the test database (or the one at URL ``database``) and return
    all rows."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    from service.db.session import get_engine

    engine = get_engine() if database is None else create_engine(database, poolclass=NullPool)
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(query), params).all()]


class SweepPause:
    """The sweep's advisory lock, held on the test database by this process (``sweep_paused``)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def wait_for_forced_sweep(self, timeout: float = 30.0) -> None:
        """Until a forced sweep (the ``ezq.sweep`` task) waits for the lock: released then,
        the lock goes to it, not to a periodic sweep (those never queue for it)."""
        from sqlalchemy import text

        from service.worker.sweep import _LOCK_KEY

        # A one-bigint key is held as classid (its high half: 0 here), objid, objsubid 1.
        waiting = text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 0"
            " AND objid::bigint = :k AND objsubid = 1 AND NOT granted AND database ="
            " (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        deadline = time.monotonic() + timeout
        while True:
            found = self._conn.execute(waiting, {"k": _LOCK_KEY}).scalar_one()
            self._conn.rollback()  # not left idle in a transaction between looks
            if found:
                return
            assert time.monotonic() < deadline, f"no forced sweep waited within {timeout}s"
            time.sleep(0.02)


@contextlib.contextmanager
def sweep_paused() -> Iterator[SweepPause]:
    """No worker's periodic sweep runs on the test database meanwhile (each steps aside at
    the lock); a forced one waits, and runs as soon as this ends. For a test whose rows the
    suite's worker would otherwise sweep (it does every second) before the test looks:
    a seeded job that has no message, a delivery made overdue."""
    from sqlalchemy import text

    from service.db.session import get_engine
    from service.worker.sweep import _LOCK_KEY

    with get_engine().connect() as conn:
        conn.execute(text("SELECT set_config('lock_timeout', '30s', true)"))
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _LOCK_KEY})
        conn.commit()
        try:
            yield SweepPause(conn)
        finally:
            try:
                conn.rollback()  # whatever a failed look left open
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_KEY})
                conn.commit()
            except Exception:
                # Not back to the pool holding the lock: the server releases it when the
                # connection closes.
                conn.invalidate()
                raise


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def places_holding(secret: str, database: str | None = None) -> list[str]:
    """Every table of the test database (or the one at URL ``database``) and every Redis key
    whose contents hold ``secret``."""
    import redis as redis_lib

    found = []
    for (table,) in sql(
        "SELECT quote_ident(table_name) FROM information_schema.tables"
        " WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
        database=database,
    ):
        rows = sql(
            f"SELECT count(*) FROM {table} t WHERE t::text LIKE :k",
            database=database,
            k=f"%{secret}%",
        )
        if rows != [(0,)]:
            found.append(f"table {table}")
    client = redis_lib.Redis.from_url(REDIS_URL)
    needle = secret.encode()
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        values: list[bytes] = []
        if kind == b"string":
            values = [client.get(key) or b""]
        elif kind == b"list":
            values = client.lrange(key, 0, -1)
        elif kind == b"hash":
            values = list(client.hgetall(key).values())
        elif kind == b"zset":
            values = [member for member, _ in client.zscan_iter(key)]
        elif kind == b"set":
            values = list(client.sscan_iter(key))
        elif kind == b"stream":  # live tokens
            values = [v for _, fields in client.xrange(key) for v in fields.values()]
        if any(needle in v for v in values):
            found.append(f"redis {key!r}")
    return found


def run_ezq(
    *args: str,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run the real ``ezq`` CLI as a subprocess, from outside the checkout."""
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        capture_output=True,
        text=True,
        input=stdin,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        cwd="/",
    )


def request_for(fake_gateway: Any, prompt: str) -> Any:
    """The last request the fake gateway received whose last message is ``prompt``.

    The session worker's sweep may run other tests' leftover jobs at any time, so a test
    finds its own request by content rather than by position.
    """
    for request in reversed(fake_gateway.requests):
        messages = request.body.get("messages") or [{}]
        if messages[-1].get("content") == prompt:
            return request
    raise AssertionError(f"the fake gateway received no request for {prompt!r}")


class ApiServer:
    """A real ``ezq api`` subprocess on a free port, logging to a file (a pipe nobody reads
    would fill up and stall the server)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "api", "--port", str(self.port)],
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                import httpx

                if httpx.get(f"{self.url}/openapi.json", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"ezq api did not start:\n{self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture(scope="module")
def api_server_factory(
    service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., ApiServer]]:
    """Start ``ezq api`` processes with extra settings; stopped at the module's end."""
    started: list[ApiServer] = []
    logs = tmp_path_factory.mktemp("api")

    def start(**env: str) -> ApiServer:
        server = ApiServer({**service_env, **env}, logs / f"api-{len(started)}.log")
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def foreign_app(service_env: dict[str, str]) -> Iterator[Any]:
    """A Celery app that knows nothing of ezq but the task name and queue (another
    service's producer)."""
    from celery import Celery

    app = Celery("billing-service", broker=REDIS_URL, backend=REDIS_URL)
    app.conf.task_serializer = "json"
    app.conf.result_serializer = "json"
    app.conf.accept_content = ["json"]
    yield app
    app.close()

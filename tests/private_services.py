"""A private Redis and a private Postgres that a test may stop and start at will.

The shared services on 6379 and 5432 are never touched: these run on free ports, in
temporary folders, and are stopped when the test ends.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import psycopg
import redis

from tests.conftest import ROOT, free_port


def _wait(check: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            check()  # type: ignore[operator]
            return
        except Exception as exc:  # not up yet
            last = exc
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up: {last}")


class PrivateRedis:
    """``redis-server`` on a free port; ``stop`` and ``start`` keep the port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrivateRedis:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait(lambda: redis.Redis.from_url(self.url).ping(), "private redis")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"{name} not found under /usr/lib/postgresql")
    return found[-1]


class PrivatePostgres:
    """A throwaway cluster (``initdb`` + ``pg_ctl``) on a free port, migrated to head.

    Postgres refuses to run as root, so when the tests run as root the cluster belongs to
    the ``postgres`` user.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="ezq-pg-"))
        self.data = self.dir / "data"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/ezq"
        self._as_postgres = os.geteuid() == 0

    def _run(self, *args: str) -> None:
        command = list(args)
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True)

    def start(self) -> PrivatePostgres:
        if not self.data.exists():
            if self._as_postgres:
                shutil.chown(self.dir, "postgres")
            self._run(
                _pg_bin("initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            )
        self._run(
            _pg_bin("pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.dir / "log"),
            "-w",
            "-o",
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1",
            "start",
        )
        _wait(
            lambda: psycopg.connect(self.url.rsplit("/", 1)[0] + "/postgres").close(),
            "private postgres",
        )
        return self

    def migrate(self) -> None:
        env = {**os.environ, "DATABASE_URL": self.url}
        subprocess.run(
            [sys.executable, "-m", "service", "db", "upgrade"],
            check=True,
            env=env,
            cwd="/",
            capture_output=True,
        )

    def stop(self, mode: str = "immediate") -> None:
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # not running
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        self.start()
        self.migrate()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


__all__ = ["ROOT", "PrivatePostgres", "PrivateRedis"]

"""Who this worker process is, which jobs it is running, and the heartbeat that keeps their
leases alive while it runs them."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError

from service.config import Settings
from service.db import recovery
from service.db.session import transaction

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerIdentity:
    """A worker process as ``workers`` knows it: ``host:pid:random``."""

    id: str
    hostname: str
    pid: int

    @classmethod
    def new(cls) -> WorkerIdentity:
        hostname = socket.gethostname()
        pid = os.getpid()
        return cls(id=f"{hostname}:{pid}:{secrets.token_hex(3)}", hostname=hostname, pid=pid)


class ActiveJobs:
    """The jobs this process is running now, with when each was claimed (monotonic)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._claimed_at: dict[uuid.UUID, float] = {}

    def add(self, job_id: uuid.UUID) -> None:
        with self._lock:
            self._claimed_at[job_id] = time.monotonic()

    def discard(self, job_id: uuid.UUID) -> None:
        with self._lock:
            self._claimed_at.pop(job_id, None)

    def renewable(self, longest_hold_s: float) -> list[uuid.UUID]:
        """Jobs whose lease a heartbeat should renew: all but those held implausibly long
        (a thread stuck by a bug must not keep its job forever)."""
        cutoff = time.monotonic() - longest_hold_s
        with self._lock:
            return [job_id for job_id, at in self._claimed_at.items() if at > cutoff]

    def __len__(self) -> int:
        with self._lock:
            return len(self._claimed_at)


class Heartbeat(threading.Thread):
    """Beats every ``EZQ_HEARTBEAT_INTERVAL``: the worker is alive, its leases renewed.

    When the database is unreachable it tries again every second and logs once per outage.
    """

    def __init__(self, identity: WorkerIdentity, active: ActiveJobs, settings: Settings) -> None:
        super().__init__(name="ezq-heartbeat", daemon=True)
        self.identity = identity
        self.active = active
        self.settings = settings
        self._stop_event = threading.Event()
        self.beats = 0

    def beat(self) -> None:
        with transaction() as session:
            recovery.heartbeat(
                session,
                worker_id=self.identity.id,
                hostname=self.identity.hostname,
                pid=self.identity.pid,
                lease_seconds=self.settings.lease_seconds,
                job_ids=self.active.renewable(self.settings.longest_hold_seconds),
            )
        self.beats += 1

    def run(self) -> None:
        failing = False
        while not self._stop_event.is_set():
            try:
                self.beat()
            except SQLAlchemyError as exc:
                if not failing:
                    log.warning(
                        "heartbeat: database unavailable, retrying every second: %s",
                        type(exc).__name__,
                    )
                failing = True
                self._stop_event.wait(1.0)
                continue
            except Exception:  # a bug must not silently stop renewing leases
                log.exception("heartbeat failed")
                self._stop_event.wait(1.0)
                continue
            if failing:
                log.warning("heartbeat: database reachable again")
                failing = False
            self._stop_event.wait(self.settings.ezq_heartbeat_interval)

    def stop(self) -> None:
        """Stop beating and mark the worker stopped (a clean shutdown)."""
        self._stop_event.set()
        try:
            with transaction() as session:
                recovery.worker_stopped(session, self.identity.id)
        except SQLAlchemyError:
            log.warning("could not mark worker %s stopped", self.identity.id)

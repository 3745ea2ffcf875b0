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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError

from service import metrics
from service.config import Settings
from service.db import recovery
from service.db.session import transaction
from service.worker.dispatch import publish_jobs

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
    """The jobs this process is running now, with when each was claimed (monotonic), and
    the claims it is making.

    A claim that raised may have been committed all the same (the connection was cut after
    Postgres committed, before its answer arrived): its job is then running under this
    worker's lease with no thread of it running the job. Such a claim is "in doubt" until
    the heartbeat settles it (``Heartbeat.settle_claims_in_doubt``), which needs a moment
    when no claim of this process is under way: every job running under its lease is then
    one it runs, one it gave up (``abandon``: a call may have been made), or one of those
    lost claims.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._claims_changed = threading.Condition(self._lock)
        self._claimed_at: dict[uuid.UUID, float] = {}
        # Jobs given up after their claim without their outcome recorded: a call may have
        # been made, so only the sweep may end their attempt.
        self._abandoned: set[uuid.UUID] = set()
        self._claiming = 0  # claims under way
        self._settling = False  # new claims wait while lost claims are settled
        self._in_doubt = False

    def add(self, job_id: uuid.UUID) -> None:
        with self._lock:
            self._claimed_at[job_id] = time.monotonic()
            self._abandoned.discard(job_id)  # claimed again: the attempt given up has ended

    def discard(self, job_id: uuid.UUID) -> None:
        """The job's attempt ended, its outcome recorded."""
        with self._lock:
            self._claimed_at.pop(job_id, None)

    def abandon(self, job_id: uuid.UUID) -> None:
        """The job was left running without its outcome recorded (the database stayed
        unreachable, or a bug): its lease runs out and the sweep takes it over."""
        with self._lock:
            self._claimed_at.pop(job_id, None)
            self._abandoned.add(job_id)

    def renewable(self, longest_hold_s: float) -> list[uuid.UUID]:
        """Jobs whose lease a heartbeat should renew: all but those held implausibly long
        (a thread stuck by a bug must not keep its job forever)."""
        cutoff = time.monotonic() - longest_hold_s
        with self._lock:
            return [job_id for job_id, at in self._claimed_at.items() if at > cutoff]

    @contextmanager
    def claiming(self) -> Iterator[None]:
        """Around a claim and the ``add`` of the job it claimed. A claim that raises is in
        doubt (see the class docstring)."""
        with self._lock:
            while self._settling:
                self._claims_changed.wait()
            self._claiming += 1
        try:
            yield
        except BaseException:
            with self._lock:
                self._in_doubt = True
            raise
        finally:
            with self._lock:
                self._claiming -= 1
                if not self._claiming:
                    self._claims_changed.notify_all()

    @property
    def in_doubt(self) -> bool:
        return self._in_doubt

    @contextmanager
    def settling(self) -> Iterator[set[uuid.UUID]]:
        """Hold new claims back until the claims under way have ended; yield the jobs
        this process runs or gave up, and let claims go on after. The claims in doubt are
        taken as settled unless the block raises."""
        with self._lock:
            self._settling = True
            while self._claiming:
                self._claims_changed.wait()
            running = set(self._claimed_at) | self._abandoned
            self._in_doubt = False
        try:
            yield running
        except BaseException:
            with self._lock:
                self._in_doubt = True
            raise
        finally:
            with self._lock:
                self._settling = False
                self._claims_changed.notify_all()

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
        if self.active.in_doubt:
            self.settle_claims_in_doubt()

    def settle_claims_in_doubt(self) -> list[uuid.UUID]:
        """Undo the claims this process made and lost the answer of (see ``ActiveJobs``):
        their jobs are pending again as if never claimed, with no attempt counted, and are
        published. Claims of this process wait for the one round trip this takes."""
        with self.active.settling() as running, transaction() as session:
            undone = recovery.undo_lost_claims(session, holder=self.identity.id, keep=running)
        if undone:
            metrics.claims_undone(len(undone))
            log.warning(
                "undid %d claims whose answer was lost with their connection; republishing",
                len(undone),
            )
            published = [job_id for job_id in undone if job_id not in publish_jobs(undone)]
            if published:
                with transaction() as session:
                    recovery.mark_published(session, published)
        return undone

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

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

from service import constants as c
from service import metrics
from service.config import Settings
from service.db import recovery
from service.db.session import UNAVAILABLE, own_connection
from service.worker.dispatch import republish

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
    """The attempts this process is running now, with when each was claimed (monotonic),
    and the claims it is making.

    A claim whose connection was lost may have been committed all the same (the connection
    was cut after Postgres committed, before its answer arrived): its job is then running
    under this worker's lease with no thread of it running the job. Such a claim is "in
    doubt" until the heartbeat settles it (``Heartbeat.settle_claims_in_doubt``), at a
    moment when no claim of this process is under way: every job running under its lease
    is then one it runs, one it gave up (``abandon``: a call may have been made), or one of
    those lost claims. Attempts are told apart by number, so that a thread that ends late
    cannot take a later attempt of its job off the list.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._claims_changed = threading.Condition(self._lock)
        self._claimed_at: dict[tuple[uuid.UUID, int], float] = {}
        # Attempts given up after their claim without their outcome recorded: a call may
        # have been made, so only the sweep may end them.
        self._abandoned: set[tuple[uuid.UUID, int]] = set()
        self._claiming = 0  # claims under way
        self._settling = False  # new claims wait while lost claims are settled
        # When the last claim in doubt raised, and the time before which a settling has
        # cleared every doubt (monotonic).
        self._doubt_at: float | None = None
        self._settled_before = float("-inf")

    def add(self, job_id: uuid.UUID, attempt: int) -> None:
        with self._lock:
            self._claimed_at[(job_id, attempt)] = time.monotonic()
            if self._abandoned:  # claimed again: its earlier attempts given up were taken over
                self._abandoned = {(j, a) for j, a in self._abandoned if j != job_id or a > attempt}

    def discard(self, job_id: uuid.UUID, attempt: int) -> None:
        """The attempt ended, its outcome recorded."""
        with self._lock:
            self._claimed_at.pop((job_id, attempt), None)

    def abandon(self, job_id: uuid.UUID, attempt: int) -> None:
        """The attempt was left running without its outcome recorded (the database stayed
        unreachable, or a bug): its lease runs out and the sweep takes it over."""
        with self._lock:
            self._claimed_at.pop((job_id, attempt), None)
            self._abandoned.add((job_id, attempt))

    def renewable(self, longest_hold_s: float) -> list[uuid.UUID]:
        """Jobs whose lease a heartbeat should renew: all but those held implausibly long
        (a thread stuck by a bug must not keep its job forever)."""
        cutoff = time.monotonic() - longest_hold_s
        with self._lock:
            return list({job_id for (job_id, _), at in self._claimed_at.items() if at > cutoff})

    @contextmanager
    def claiming(self) -> Iterator[None]:
        """Around a claim and the ``add`` of the attempt it claimed. A claim that loses its
        database connection is in doubt (see the class docstring)."""
        with self._lock:
            while self._settling:
                self._claims_changed.wait()
            self._claiming += 1
        try:
            yield
        except UNAVAILABLE:
            with self._lock:
                self._doubt_at = time.monotonic()
            raise
        finally:
            with self._lock:
                self._claiming -= 1
                if not self._claiming:
                    self._claims_changed.notify_all()

    @property
    def in_doubt(self) -> bool:
        doubt_at = self._doubt_at
        return doubt_at is not None and doubt_at > self._settled_before

    @contextmanager
    def settling(self, *, wait_s: float, doubt_s: float) -> Iterator[set[uuid.UUID] | None]:
        """Hold new claims back until the claims under way have ended (None after
        ``wait_s`` if they have not: the next beat tries again); yield the jobs this
        process runs or gave up, and let claims go on after.

        A settling that completes clears the doubts of claims that raised ``doubt_s``
        before it began or earlier: a claim whose connection was cut may still be running
        in its backend, to commit later, and is settled by a later beat."""
        with self._lock:
            self._settling = True
            began = time.monotonic()
            drained = self._claims_changed.wait_for(lambda: not self._claiming, timeout=wait_s)
            kept = {job_id for job_id, _ in (*self._claimed_at, *self._abandoned)}
            if not drained:
                self._settling = False
                self._claims_changed.notify_all()
        if not drained:
            yield None
            return
        try:
            yield kept
            with self._lock:
                self._settled_before = max(self._settled_before, began - doubt_s)
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
        with own_connection(self.name).begin() as session:
            recovery.heartbeat(
                session,
                worker_id=self.identity.id,
                hostname=self.identity.hostname,
                pid=self.identity.pid,
                queue=self.settings.ezq_queue,
                lease_seconds=self.settings.lease_seconds,
                job_ids=self.active.renewable(self.settings.longest_hold_seconds),
            )
        self.beats += 1
        if self.active.in_doubt:
            self.settle_claims_in_doubt()

    def settle_claims_in_doubt(self) -> list[uuid.UUID]:
        """Undo the claims this process made and lost the answer of (see ``ActiveJobs``):
        their jobs are pending again as if never claimed, with no attempt counted, and are
        published. Claims of this process wait for the one round trip this takes; it is
        put off to the next beat when they do not end within a second."""
        undone: list[uuid.UUID] = []
        settling = self.active.settling(
            wait_s=c.SETTLE_CLAIMS_WAIT_S, doubt_s=self.settings.lease_seconds
        )
        with settling as kept:
            if kept is None:
                return undone
            with own_connection(self.name).begin() as session:
                undone = recovery.undo_lost_claims(session, holder=self.identity.id, keep=kept)
        if undone:
            metrics.claims_undone(len(undone))
            log.warning(
                "undid %d claims whose answer was lost with their connection; republishing",
                len(undone),
            )
            republish(undone)
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
            with own_connection(self.name).begin() as session:
                recovery.worker_stopped(session, self.identity.id)
        except SQLAlchemyError:
            log.warning("could not mark worker %s stopped", self.identity.id)

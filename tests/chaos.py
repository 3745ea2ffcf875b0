"""The fault suite: a mixed workload through two worker processes while faults are injected
one at a time, then every invariant checked with SQL.

    python -m tests.chaos                # make chaos: >= 1,000 jobs, every fault
    python -m tests.chaos --short        # the short variant that make test runs

Everything it starts is private and on loopback: a Redis and a Postgres of its own (so it can
stop and restart them), the fake gateway, a webhook receiver and two ``ezq worker``
processes, all with the default recovery settings. Bounded in time: each phase waits at
most ``--phase-timeout`` seconds for its jobs.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis

from tests.private_services import PrivatePostgres, PrivateRedis

API_KEY = "sk-ezq-chaos-" + secrets.token_hex(12)
WEBHOOK_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
MODEL = "glm-5.1"
QUEUE = "ezq-chaos"
FINAL = ("succeeded", "failed", "cancelled")


@dataclass
class Phase:
    name: str
    jobs: list[str] = field(default_factory=list)
    fault_ended_at: float = 0.0
    done_at: float | None = None
    lost: int = 0
    duplicates: int = 0
    longest_s: float = 0.0

    @property
    def recovery_s(self) -> float | None:
        return None if self.done_at is None else max(0.0, self.done_at - self.fault_ended_at)


class Cluster:
    """The private services and the two workers."""

    def __init__(self, workdir: Path, concurrency: int, settings: dict[str, str]) -> None:
        from service.fake_gateway import FakeGateway, Fault
        from service.webhooks.testing import Receiver

        self.workdir = workdir
        self.redis = PrivateRedis().start()
        self.pg = PrivatePostgres()
        self.pg.start()
        self.pg.migrate()
        self.gateway = FakeGateway(api_keys={API_KEY}, reply_words=30).start()
        # Every call streams for a little under a second, so faults land mid-call.
        self.gateway.add_faults(Fault(kind="normal", chunk_delay=0.03, times=10_000_000))
        self.receiver = Receiver([WEBHOOK_SECRET]).start()
        self.env = {
            "DATABASE_URL": self.pg.url,
            "CELERY_BROKER_URL": self.redis.url,
            "EZQ_QUEUE": QUEUE,
            "EZROUTER_BASE_URL": self.gateway.url,
            "EZROUTER_API_KEY": API_KEY,
            "EZQ_WORKER_CONCURRENCY": str(concurrency),
            "EZQ_GATEWAY_READ_TIMEOUT": "10",
            "EZQ_GATEWAY_ATTEMPT_DEADLINE": "30",
            "EZQ_MAX_ATTEMPTS": "6",
            "EZQ_RETRY_BACKOFF_BASE": "0.5",
            "EZQ_RETRY_BACKOFF_MAX": "5",
            "WEBHOOK_SECRET": WEBHOOK_SECRET,
            "WEBHOOK_ALLOWED_NETWORKS": "127.0.0.1/32",
            "EZQ_WEBHOOK_RETRY_SCHEDULE": "1,2,5",
            "EZQ_LOG_LEVEL": "INFO",
            **settings,
        }
        self.workers: list[subprocess.Popen[bytes] | None] = [None, None]
        self._log_start: dict[int, int] = {}  # where each worker's latest run begins
        for index in range(2):
            self.start_worker(index)
        for index in range(2):
            self.wait_ready(index)

    def log_path(self, index: int) -> Path:
        return self.workdir / f"worker-{index}.log"

    def start_worker(self, index: int) -> None:
        log = self.log_path(index).open("ab")
        self._log_start[index] = self.log_path(index).stat().st_size
        self.workers[index] = subprocess.Popen(
            [sys.executable, "-m", "service", "worker", "-n", f"chaos{index}@%h"],
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd="/",
        )

    def wait_ready(self, index: int, timeout: float = 60) -> None:
        """Until the worker started last at ``index`` consumes (its " ready." line)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.log_path(index).open("rb") as log:
                log.seek(self._log_start[index])
                if b" ready." in log.read():
                    return
            time.sleep(0.1)
        raise RuntimeError(f"worker {index} not ready after {timeout}s")

    def pid(self, index: int) -> int:
        proc = self.workers[index]
        assert proc is not None
        return proc.pid

    def kill_worker(self, index: int) -> None:
        proc = self.workers[index]
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        for _ in range(100):
            try:
                with psycopg.connect(self.pg.url, connect_timeout=3) as conn:
                    return conn.execute(query, params).fetchall()
            except psycopg.OperationalError:
                time.sleep(0.5)
        raise RuntimeError("the private Postgres does not answer")

    def close(self) -> None:
        for index in range(2):
            proc = self.workers[index]
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self.receiver.stop()
        self.gateway.stop()
        self.redis.stop()
        self.pg.close()


def enqueue_batch(cluster: Cluster, count: int, label: str) -> list[str]:
    """``count`` jobs: a fifth in five-turn conversations, a third with a webhook."""
    from service import enqueue_completion

    jobs: list[str] = []
    conversation: str | None = None
    for n in range(count):
        marker = f"{label}-{n}-{uuid.uuid4().hex[:8]}"
        in_conversation = n < count // 5
        turn = n % 5
        job_id = enqueue_completion(
            MODEL,
            [{"role": "user", "content": f"chaos {marker}"}],
            conversation_id=conversation if in_conversation and turn else None,
            metadata={"chaos": label},
            callback_url=cluster.receiver.url("/hook") if n % 3 == 0 else None,
        )
        if in_conversation and turn == 0:
            conversation = str(
                cluster.sql("SELECT conversation_id FROM jobs WHERE id = %s", job_id)[0][0]
            )
        jobs.append(str(job_id))
    return jobs


def wait_final(cluster: Cluster, phase: Phase, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        (pending,) = cluster.sql(
            "SELECT count(*) FROM jobs WHERE id = ANY(%s::uuid[])"
            " AND status NOT IN ('succeeded', 'failed', 'cancelled')",
            phase.jobs,
        )[0]
        if pending == 0:
            phase.done_at = time.monotonic()
            break
        time.sleep(0.5)
    (phase.lost,) = cluster.sql(
        "SELECT count(*) FROM jobs WHERE id = ANY(%s::uuid[])"
        " AND status NOT IN ('succeeded', 'failed', 'cancelled')",
        phase.jobs,
    )[0]
    (longest,) = cluster.sql(
        "SELECT coalesce(max(extract(epoch FROM finished_at - created_at)), 0)"
        " FROM jobs WHERE id = ANY(%s::uuid[])",
        phase.jobs,
    )[0]
    phase.longest_s = float(longest)


# --- the faults ------------------------------------------------------------------------


# A running job's lease holder is ``host:pid:random`` (service.worker.liveness).
_RUNNING_ON = "status = 'running' AND split_part(lease_holder, ':', 2) = %s"


def _wait_running(cluster: Cluster, index: int | None = None, timeout: float = 60) -> None:
    """Until a job runs (on worker ``index``, if given): a fault injected into an idle
    cluster would test nothing, so not finding one fails the run."""
    query, params = "SELECT count(*) FROM jobs WHERE status = 'running'", ()
    if index is not None:
        query = f"SELECT count(*) FROM jobs WHERE {_RUNNING_ON}"
        params = (str(cluster.pid(index)),)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cluster.sql(query, *params)[0][0] > 0:
            return
        time.sleep(0.05)
    raise RuntimeError(f"no job running{'' if index is None else f' on worker {index}'}")


def kill_mid_call(cluster: Cluster) -> None:
    _wait_running(cluster, 0)
    cluster.kill_worker(0)
    cluster.start_worker(0)


def kill_after_answer(cluster: Cluster) -> None:
    """SIGKILL a worker that holds a complete reply it has not saved yet.

    One of its running jobs is row-locked from here, so that the worker's save (and its
    heartbeat) waits on the lock once the gateway has answered; the worker is killed as
    soon as its save is seen waiting, and the lock released."""
    pid = str(cluster.pid(1))
    with psycopg.connect(cluster.pg.url) as holder:
        deadline = time.monotonic() + 60
        while True:
            row = holder.execute(
                f"SELECT id, input_messages->0->>'content' FROM jobs WHERE {_RUNNING_ON}"
                " LIMIT 1 FOR UPDATE SKIP LOCKED",
                (pid,),
            ).fetchone()
            if row is not None:
                break
            holder.rollback()
            if time.monotonic() > deadline:
                raise RuntimeError("no job running on worker 1")
            time.sleep(0.05)
        job_id, prompt = row
        (me,) = holder.execute("SELECT pg_backend_pid()").fetchone() or (None,)

        def answered() -> bool:
            calls = [
                r
                for r in cluster.gateway.requests
                if (r.body.get("messages") or [{}])[-1].get("content") == prompt
            ]
            return bool(calls) and cluster.gateway.ended_at(calls[-1].request_id) is not None

        def save_waits() -> bool:
            # Whatever statement of the save comes first waits on the row, directly or
            # behind another waiter (the heartbeat, which renews leases, waits too and is
            # not the save).
            return bool(
                cluster.sql(
                    """WITH RECURSIVE waiting(pid) AS (
                           SELECT %s::int
                           UNION
                           SELECT a.pid FROM pg_stat_activity a, waiting w
                           WHERE w.pid = ANY(pg_blocking_pids(a.pid)))
                       SELECT count(*) FROM pg_stat_activity a JOIN waiting USING (pid)
                       WHERE a.pid <> %s AND a.query NOT LIKE '%%beat AS%%'
                         AND a.query NOT LIKE '%%ezq_claim_job%%'""",
                    me,
                    me,
                )[0][0]
            )

        deadline = time.monotonic() + 60
        while not (answered() and save_waits()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} was never saved")
            time.sleep(0.02)
        cluster.kill_worker(1)
        holder.rollback()
    cluster.start_worker(1)


def broker_flush(cluster: Cluster) -> None:
    _wait_running(cluster)
    redis.Redis.from_url(cluster.redis.url).flushall()


def broker_down(cluster: Cluster, seconds: float = 15) -> None:
    _wait_running(cluster)
    cluster.redis.stop()
    time.sleep(seconds)
    cluster.redis.start()


def pg_terminate(cluster: Cluster) -> None:
    _wait_running(cluster)
    cluster.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = 'ezq' AND pid <> pg_backend_pid()"
    )


def pg_down(seconds: float) -> Callable[[Cluster], None]:
    def fault(cluster: Cluster) -> None:
        _wait_running(cluster)
        cluster.pg.stop()
        time.sleep(seconds)
        cluster.pg.start()

    fault.__name__ = f"postgres_down_{seconds:g}s"
    return fault


def poison(cluster: Cluster) -> None:
    client = redis.Redis.from_url(cluster.redis.url)
    for raw in (b"not json", b"[1, 2]", b'"a string"', b'{"body": "x"}', b"\xff\xfe"):
        client.lpush(QUEUE, raw)


FULL_FAULTS: list[Callable[[Cluster], None]] = [
    kill_mid_call,
    kill_after_answer,
    broker_flush,
    broker_down,
    pg_terminate,
    pg_down(10),
    pg_down(70),
    poison,
]
SHORT_FAULTS: list[Callable[[Cluster], None]] = [
    kill_mid_call,
    kill_after_answer,
    broker_flush,
    pg_terminate,
    pg_down(8),
    poison,
]


# --- the invariants --------------------------------------------------------------------


def check_invariants(cluster: Cluster, jobs: list[str]) -> dict[str, int]:
    """Every invariant over all jobs; each value is a count of violations."""
    q = cluster.sql
    found: dict[str, int] = {}
    found["not final"] = q(
        "SELECT count(*) FROM jobs WHERE status NOT IN ('succeeded', 'failed', 'cancelled')"
    )[0][0]
    found["succeeded without exactly one reply"] = q(
        """SELECT count(*) FROM jobs j WHERE j.status = 'succeeded' AND (
               SELECT count(*) FROM messages m WHERE m.job_id = j.id AND m.role = 'assistant'
           ) <> 1"""
    )[0][0]
    found["succeeded without exactly one usage row"] = q(
        """SELECT count(*) FROM jobs j WHERE j.status = 'succeeded'
           AND (SELECT count(*) FROM token_usage u WHERE u.job_id = j.id) <> 1"""
    )[0][0]
    found["failed with a reply or usage"] = q(
        """SELECT count(*) FROM jobs j WHERE j.status = 'failed' AND (
               EXISTS (SELECT 1 FROM token_usage u WHERE u.job_id = j.id)
               OR EXISTS (SELECT 1 FROM messages m WHERE m.job_id = j.id))"""
    )[0][0]
    found["history gaps"] = q(
        """SELECT count(*) FROM (
               SELECT conversation_id, max(seq) AS top, count(*) AS n
               FROM messages GROUP BY conversation_id) h WHERE top <> n"""
    )[0][0]
    found["turns out of order"] = q(
        """SELECT count(*) FROM (
               SELECT m.conversation_id, m.seq, j.enqueue_seq,
                      lag(j.enqueue_seq) OVER (PARTITION BY m.conversation_id ORDER BY m.seq)
                        AS previous
               FROM messages m JOIN jobs j ON j.id = m.job_id) t
           WHERE previous > enqueue_seq"""
    )[0][0]
    calls: dict[str, int] = {}
    for request in cluster.gateway.requests:
        # The job's own prompt is the last message; earlier turns ride along as history.
        last = str((request.body.get("messages") or [{}])[-1].get("content", ""))
        if last.startswith("chaos "):
            marker = last[len("chaos ") :]
            calls[marker] = calls.get(marker, 0) + 1
    attempts = {
        marker: (int(total), int(lost))
        for marker, total, lost in q(
            """SELECT substring(j.input_messages->0->>'content' FROM 'chaos (.*)$'),
                      count(a.id),
                      count(a.id) FILTER (WHERE a.error_type = 'worker_lost')
               FROM jobs j LEFT JOIN job_attempts a ON a.job_id = j.id
               GROUP BY 1"""
        )
    }
    # Every call has its attempt row (written before the call). An attempt may lack its
    # call only when its worker was killed between the claim and the request.
    found["gateway calls without an attempt row"] = sum(
        1 for marker, (total, _) in attempts.items() if calls.get(marker, 0) > total
    )
    found["attempts without a call, worker alive"] = sum(
        1 for marker, (total, lost) in attempts.items() if calls.get(marker, 0) < total - lost
    )
    webhooks: dict[str, set[str]] = {}
    for received in cluster.receiver.received("/hook"):
        event = json.loads(received.body)
        webhooks.setdefault(event["data"]["job_id"], set()).add(received.webhook_id)
    expected = {
        str(job_id)
        for (job_id,) in q(
            "SELECT id FROM jobs WHERE callback_url IS NOT NULL AND status IN"
            " ('succeeded', 'failed', 'cancelled')"
        )
    }
    found["webhook events missing"] = sum(1 for j in expected if j not in webhooks)
    found["events with more than one webhook-id"] = sum(
        1 for ids in webhooks.values() if len(ids) > 1
    )
    found["jobs lost"] = sum(1 for j in jobs if not q("SELECT 1 FROM jobs WHERE id = %s", j))
    return found


def count_duplicates(cluster: Cluster, phase: Phase) -> int:
    """The phase's jobs with a second reply, usage row or webhook-id, or with more gateway
    calls than attempt rows."""
    q = cluster.sql
    doubled = {
        str(job_id)
        for (job_id,) in q(
            """SELECT j.id FROM jobs j WHERE j.id = ANY(%s::uuid[]) AND (
                   (SELECT count(*) FROM messages m
                     WHERE m.job_id = j.id AND m.role = 'assistant') > 1
                   OR (SELECT count(*) FROM token_usage u WHERE u.job_id = j.id) > 1)""",
            phase.jobs,
        )
    }
    webhooks: dict[str, set[str]] = {}
    for received in cluster.receiver.received("/hook"):
        event = json.loads(received.body)
        webhooks.setdefault(event["data"]["job_id"], set()).add(received.webhook_id)
    doubled |= {j for j in phase.jobs if len(webhooks.get(j, ())) > 1}
    calls: dict[str, int] = {}
    for request in cluster.gateway.requests:
        last = str((request.body.get("messages") or [{}])[-1].get("content", ""))
        calls[last] = calls.get(last, 0) + 1
    for job_id, prompt, attempts in q(
        """SELECT j.id, j.input_messages->0->>'content',
                  (SELECT count(*) FROM job_attempts a WHERE a.job_id = j.id)
           FROM jobs j WHERE j.id = ANY(%s::uuid[])""",
        phase.jobs,
    ):
        if calls.get(prompt, 0) > attempts:
            doubled.add(str(job_id))
    return len(doubled)


def wait_for_webhooks(cluster: Cluster, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        (pending,) = cluster.sql(
            "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'"
        )[0]
        if pending == 0:
            return
        time.sleep(0.5)


# --- running it ------------------------------------------------------------------------


# Recovery at test speed, for the short variant inside `make test`; `make chaos` keeps the
# defaults, since their timings are what it reports.
FAST_RECOVERY = {
    "EZQ_LEASE_SECONDS": "6",
    "EZQ_HEARTBEAT_INTERVAL": "1",
    "EZQ_SWEEP_INTERVAL": "1",
    "EZQ_REDISPATCH_AFTER": "5",
}


def run(
    *,
    faults: list[Callable[[Cluster], None]],
    jobs_per_phase: int,
    phase_timeout: float,
    concurrency: int,
    workdir: Path,
    settings: dict[str, str] | None = None,
) -> tuple[list[Phase], dict[str, int]]:
    from tests.conftest import reset_settings

    cluster = Cluster(workdir, concurrency, settings or {})
    saved = {k: os.environ.get(k) for k in cluster.env}
    os.environ.update(cluster.env)
    # This process's own enqueues must reach the private broker, even when an earlier
    # test already published to another one from this process.
    reset_settings()
    phases: list[Phase] = []
    try:
        for fault in faults:
            phase = Phase(fault.__name__)
            phase.jobs = enqueue_batch(cluster, jobs_per_phase, fault.__name__)
            fault(cluster)
            phase.fault_ended_at = time.monotonic()
            wait_final(cluster, phase, phase_timeout)
            phases.append(phase)
            print(
                f"  {phase.name}: {len(phase.jobs)} jobs, recovered in "
                f"{phase.recovery_s if phase.recovery_s is not None else float('nan'):.1f}s",
                flush=True,
            )
        wait_for_webhooks(cluster, 60)
        invariants = check_invariants(cluster, [j for p in phases for j in p.jobs])
        for phase in phases:
            phase.duplicates = count_duplicates(cluster, phase)
    finally:
        cluster.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        reset_settings()
    return phases, invariants


def report(phases: list[Phase], invariants: dict[str, int]) -> bool:
    print(
        f"\n{'fault':<22} {'jobs':>5} {'lost':>5} {'duplicates':>10} {'longest stuck s':>15}"
        f" {'recovery s':>11}"
    )
    for phase in phases:
        recovery = f"{phase.recovery_s:.1f}" if phase.recovery_s is not None else "never"
        print(
            f"{phase.name:<22} {len(phase.jobs):>5} {phase.lost:>5} {phase.duplicates:>10} "
            f"{phase.longest_s:>15.1f} {recovery:>11}"
        )
    print("\ninvariant violations:")
    for name, count in invariants.items():
        print(f"  {name:<40} {count}")
    return all(v == 0 for v in invariants.values()) and all(
        p.lost == 0 and p.duplicates == 0 for p in phases
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="the make test variant")
    parser.add_argument("--jobs-per-phase", type=int)
    parser.add_argument("--phase-timeout", type=float, default=240.0)
    args = parser.parse_args()
    faults = SHORT_FAULTS if args.short else FULL_FAULTS
    per_phase = args.jobs_per_phase or (30 if args.short else 130)
    with contextlib.ExitStack() as stack:
        import tempfile

        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ezq-chaos-")))
        print(f"{len(faults)} faults x {per_phase} jobs, two workers", flush=True)
        phases, invariants = run(
            settings=FAST_RECOVERY if args.short else None,
            faults=faults,
            jobs_per_phase=per_phase,
            phase_timeout=args.phase_timeout,
            concurrency=16,
            workdir=workdir,
        )
        ok = report(phases, invariants)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

"""``ezq worker --cpu N`` (or ``EZQ_WORKER_CPU``) runs the whole process on one CPU: every
thread it has and every thread it starts later; a CPU it may not use is refused at start
with the setting named."""

from __future__ import annotations

import os
import re
import secrets
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import WorkerProcess, run_ezq, wait_for_job
from tests.test_faults import wait_until

MODEL = "deepseek-v4-pro"


def _allowed_cpus(pid: int, task: str) -> str:
    status = Path(f"/proc/{pid}/task/{task}/status").read_text()
    return next(
        line.split(":", 1)[1].strip()
        for line in status.splitlines()
        if line.startswith("Cpus_allowed_list")
    )


def _as_list(cpus: str) -> str:
    """``0-1,3`` as ``0,1,3``."""
    found: list[int] = []
    for part in cpus.split(","):
        low, _, high = part.partition("-")
        found.extend(range(int(low), int(high or low) + 1))
    return ",".join(map(str, found))


def _threads_cpus(pid: int) -> dict[str, str]:
    cpus: dict[str, str] = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            cpus[task] = _allowed_cpus(pid, task)
        except FileNotFoundError:  # a thread that has just ended
            continue
    return cpus


@pytest.mark.parametrize("how", ["option", "environment"])
def test_a_pinned_worker_runs_every_thread_on_its_cpu(
    how: str, service_env: dict[str, str], worker_factory: Callable[..., Any]
) -> None:
    cpu = max(os.sched_getaffinity(0))
    queue = f"ezq-cpu-{secrets.token_hex(4)}"
    env = {"EZQ_QUEUE": queue}
    args: list[str] = []
    if how == "option":
        args = ["--cpu", str(cpu)]
    else:
        env["EZQ_WORKER_CPU"] = str(cpu)
    process = worker_factory(env=env, args=args)
    assert f"pinned to CPU {cpu}" in process.log()
    # A job, so that the threads started on demand (the job pool's) exist too.
    out = run_ezq("enqueue", "--model", MODEL, "pinned", env={**service_env, **env})
    assert out.returncode == 0, out.stderr
    assert wait_for_job(out.stdout.strip())["status"] == "succeeded"
    cpus = _threads_cpus(process.proc.pid)
    # The main thread, those started before the first message (logs, heartbeat, live
    # tokens), and the job pool's, started for the job.
    assert len(cpus) >= 4, cpus
    assert set(cpus.values()) == {str(cpu)}, cpus


def test_an_unpinned_worker_says_so(worker: Any) -> None:
    if len(os.sched_getaffinity(0)) == 1:
        pytest.skip("this machine gives the tests one CPU: every process is pinned")
    assert "not pinned to a CPU" in worker.log()
    everywhere = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    cpus = _threads_cpus(worker.proc.pid)
    assert {_as_list(v) for v in cpus.values()} == {everywhere}, cpus


def test_a_cpu_the_process_may_not_use_is_refused(service_env: dict[str, str]) -> None:
    allowed = ", ".join(map(str, sorted(os.sched_getaffinity(0))))
    missing = str(max(os.sched_getaffinity(0)) + 1000)
    by_option = run_ezq("worker", "--cpu", missing, env=service_env, timeout=30)
    assert by_option.returncode != 0
    assert f"--cpu: CPU {missing} is not one this process may run on ({allowed})" in (
        by_option.stderr
    )
    by_env = run_ezq("worker", env={**service_env, "EZQ_WORKER_CPU": missing}, timeout=30)
    assert by_env.returncode != 0
    assert f"EZQ_WORKER_CPU: CPU {missing} is not one" in by_env.stderr
    negative = run_ezq("worker", env={**service_env, "EZQ_WORKER_CPU": "-1"}, timeout=30)
    assert negative.returncode != 0
    assert "EZQ_WORKER_CPU: " in negative.stderr
    assert "expected a CPU number (0 or more) or 'auto' (got '-1')" in negative.stderr


def _release_claims() -> None:
    from service.worker import affinity

    while affinity._held:
        affinity._held.pop().close()


def test_auto_takes_the_last_cpu_no_other_took_then_goes_round_again() -> None:
    import socket

    from service.worker.affinity import claim_free_cpu

    names = f"ezq-test-cpu-{secrets.token_hex(4)}"
    cpus = sorted(os.sched_getaffinity(0), reverse=True)
    others: list[socket.socket] = []
    try:
        taken = []
        for _ in cpus:
            taken.append(claim_free_cpu(names=names))
        assert taken == cpus  # from the last down, each once
        # Another process holding a name (here: this one, on a socket of its own) keeps it.
        other = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        other.bind(f"\0{names}-{cpus[0]}-1")
        others.append(other)
        expected_next = cpus[1] if len(cpus) > 1 else cpus[0]
        assert claim_free_cpu(names=names) == expected_next
        # A name is given back when its holder lets it go (a worker, when it ends).
        _release_claims()
        assert claim_free_cpu(names=names) == cpus[0]
    finally:
        _release_claims()
        for other in others:
            other.close()


def test_two_workers_on_auto_take_a_cpu_each(
    service_env: dict[str, str], worker_factory: Callable[..., Any]
) -> None:
    cpus = sorted(os.sched_getaffinity(0), reverse=True)
    if len(cpus) < 2:
        pytest.skip("this machine gives the tests one CPU")
    # Workers of other runs on this machine may hold CPUs already.
    others_held = "@ezq-worker-cpu-" in Path("/proc/net/unix").read_text()
    queue = f"ezq-cpu-{secrets.token_hex(4)}"
    first = worker_factory(env={"EZQ_QUEUE": queue}, args=["--cpu", "auto"])
    second = worker_factory(env={"EZQ_QUEUE": queue, "EZQ_WORKER_CPU": "auto"})
    pinned = []
    for process in (first, second):
        cpu = {_as_list(v) for v in _threads_cpus(process.proc.pid).values()}
        assert len(cpu) == 1 and cpu <= {str(c) for c in cpus}, cpu
        (only,) = cpu
        assert f"pinned to CPU {only}" in process.log()
        pinned.append(int(only))
    if not others_held:  # gaps other workers left would be filled first
        assert pinned == cpus[:2]  # a CPU each, from the last down


def test_a_cpu_that_is_neither_a_number_nor_auto_is_refused(service_env: dict[str, str]) -> None:
    out = run_ezq("worker", "--cpu", "last", env=service_env, timeout=30)
    assert out.returncode != 0
    assert "'last' is neither a CPU number (0 or more) nor 'auto'" in out.stderr
    by_env = run_ezq("worker", env={**service_env, "EZQ_WORKER_CPU": "last"}, timeout=30)
    assert by_env.returncode != 0
    assert "EZQ_WORKER_CPU: " in by_env.stderr
    assert "expected a CPU number (0 or more) or 'auto' (got 'last')" in by_env.stderr


@pytest.mark.parametrize("flag", [["-c", "3"], ["--concurrency=3"], ["-c3"]])
def test_celerys_concurrency_flag_sizes_the_database_pool_too(
    worker_factory: Callable[..., WorkerProcess], flag: list[str]
) -> None:
    """`ezq worker -c 3` runs three threads and opens at most three connections (never more
    than its threads), as `EZQ_WORKER_CONCURRENCY=3` does."""
    queue = f"ezq-conc-{uuid.uuid4().hex[:8]}"
    process = worker_factory(env={"EZQ_QUEUE": queue}, args=flag)
    warm_up = r"warm-up: gateway client built, (\d+) database connections"
    wait_until(lambda: re.search(warm_up, process.log()) is not None, "the warm-up line")
    log = process.log()
    assert re.search(r"concurrency:\s+3 \(thread\)", log), log[-2000:]
    opened = re.search(warm_up, log)
    assert opened is not None and int(opened.group(1)) <= 3, log[-2000:]

"""Pinning a worker process to one CPU.

A worker's threads take turns holding one interpreter lock. When they may run on any
CPU, a hand-over of the lock from a thread running on one CPU to a thread waiting on
another is a wake-up across CPUs, and each job's many short turns (a socket read, a
statement, a stream chunk) run on caches another CPU warmed. Pinned to one CPU, the same
threads hand the lock over within it. A process cannot run more than one CPU's worth of
Python at a time anyway: run one worker process per CPU, each pinned to its own. What it
measured on a 2-core machine is in README, "Running at scale" (about a tenth less worker
CPU a job at half of saturation; the bare openai client gains more).

``auto`` takes a CPU no other worker of the host took: each worker pinned so holds, for
its life, an abstract Unix socket named after its CPU (``ezq-worker-cpu-<cpu>-<n>``), which
the kernel gives to one process at a time and takes back when the process ends, however
it ends; a worker takes the first name free, the CPUs from the last down (CPU 0 takes
most of a machine's interrupts), then a second round of names when every CPU has a
worker. Abstract names are per network namespace: workers on one host, or in one
container, see each other's; containers with a network namespace each do not, and
should each be given CPUs of their own (a cpuset), among which ``auto`` chooses.
"""

from __future__ import annotations

import errno
import os
import socket
import threading

from service.errors import ConfigError

AUTO = "auto"
# Rounds of names ``auto`` tries: workers per CPU it will take one for.
AUTO_ROUNDS = 64
# The names this process holds (kept open: the name is the process's while they are).
_held: list[socket.socket] = []


def claim_free_cpu(*, setting: str = "EZQ_WORKER_CPU", names: str = "ezq-worker-cpu") -> int:
    """A CPU of those this process may use that no other worker here took, held as this
    process's for its life under the abstract name ``<names>-<cpu>-<round>``: the first
    name free, round by round, each round from the last CPU down (so a name a worker gave
    back is taken again before any CPU's next round)."""
    if not hasattr(os, "sched_getaffinity") or not hasattr(socket, "AF_UNIX"):
        raise ConfigError(f"{setting}: this system cannot pin a process to a CPU")
    cpus = sorted(os.sched_getaffinity(0), reverse=True)
    for round_ in range(AUTO_ROUNDS):
        for cpu in cpus:
            claim = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                claim.bind(f"\0{names}-{cpu}-{round_}")
            except OSError as exc:
                claim.close()
                if exc.errno == errno.EADDRINUSE:
                    continue
                raise ConfigError(
                    f"{setting}: cannot take a CPU with auto: {exc.strerror}"
                ) from None
            _held.append(claim)
            return cpu
    raise ConfigError(
        f"{setting}: auto found {AUTO_ROUNDS} workers on each CPU already; name a CPU"
    )


def pin_to_cpu(cpu: int, *, setting: str = "EZQ_WORKER_CPU") -> None:
    """Run every thread of this process, and those it starts later, on ``cpu`` only.

    Linux sets affinity per thread and a new thread inherits its creator's: every thread
    running now is pinned, so that whatever starts threads later starts them pinned."""
    if not hasattr(os, "sched_setaffinity"):
        raise ConfigError(f"{setting}: this system cannot pin a process to a CPU")
    allowed = sorted(os.sched_getaffinity(0))
    if cpu not in allowed:
        raise ConfigError(
            f"{setting}: CPU {cpu} is not one this process may run on"
            f" ({', '.join(map(str, allowed))})"
        )
    try:
        tasks = [int(task) for task in os.listdir("/proc/self/task")]
    except OSError:
        # No /proc to list the threads by: the calling thread alone is enough only when
        # it is the only one.
        if threading.active_count() > 1:
            raise ConfigError(
                f"{setting}: cannot list this process's threads (/proc) to pin them"
            ) from None
        tasks = [0]
    for task in tasks:
        try:
            os.sched_setaffinity(task, {cpu})
        except ProcessLookupError:  # a thread that has just ended
            continue


def pinned_cpu() -> int | None:
    """The one CPU this process runs on, or None when it may run on several."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpus = os.sched_getaffinity(0)
    return next(iter(cpus)) if len(cpus) == 1 else None

"""The machine's other tenants, standing in: processes that keep a CPU busy for part of
every 10 ms, at a higher priority than the benchmark's own processes when it may set one.

This machine is shared: in a busy hour other tenants take CPU time from every process of
a run (the producer, Redis, Postgres, the worker, the fake gateway, the raw client) at
moments none of them chooses, and a latency that crosses five processes crosses five
chances to wait for a CPU. ``benchmarks.load --neighbours N:DUTY`` runs the whole
benchmark beside N such processes, so that what a busy hour does to the figures can be
measured at will and two versions of the code compared under the same load.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from benchmarks.procstat import stat_fields

PERIOD_S = 0.01
# Above the benchmark's processes (nice 0), as the hypervisor's other guests are: a
# neighbour that wakes takes the CPU from whichever of them runs there.
NICE = -10

# CPU time a neighbour uses after it is ready before it says "busy <wall seconds>": its
# own CPU timer's event, and the wall time it took, so that its share of a CPU shows.
BUSY_AFTER_S = 0.05

# A neighbour sets its own niceness (absolute: whatever the benchmark's is; a user who may
# not keeps the benchmark's), says so, ignores the terminal's Ctrl-C (the benchmark ends
# it), says "busy" when the kernel's CPU timer of the process (ITIMER_PROF: user and
# system time) finds it used BUSY_AFTER_S since (with the wall time that took), and ends
# by itself when the benchmark does, however it ends (its parent gone).
_SPIN = """
import os, signal, sys, time
busy, idle, parent, nice, used = (float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]),
                                  int(sys.argv[4]), float(sys.argv[5]))
signal.signal(signal.SIGINT, signal.SIG_IGN)
try:
    os.setpriority(os.PRIO_PROCESS, 0, nice)
except PermissionError:
    pass
print("ready", flush=True)
ready = time.perf_counter()
signal.signal(signal.SIGPROF, lambda *_: print("busy", time.perf_counter() - ready, flush=True))
signal.setitimer(signal.ITIMER_PROF, used)
while os.getppid() == parent:
    start = time.perf_counter()
    while time.perf_counter() - start < busy:
        pass
    time.sleep(idle)
"""


@dataclass(frozen=True)
class Neighbours:
    count: int
    duty: float  # the share of each PERIOD_S a neighbour keeps its CPU busy

    @classmethod
    def parse(cls, text: str) -> Neighbours:
        """``N:DUTY``, e.g. ``2:0.4``: two processes, each busy 40 % of every 10 ms."""
        count, sep, duty = text.partition(":")
        problem = f"--neighbours {text}: expected N:DUTY, e.g. 2:0.4 (2 processes, 40% busy)"
        if not sep or not (count.isascii() and count.isdigit()):
            raise ValueError(problem)
        try:
            share = float(duty)
        except ValueError:
            raise ValueError(problem) from None
        if int(count) < 1 or not 0 < share < 1:
            raise ValueError(f"{problem}; N at least 1 and DUTY between 0 and 1, both excluded")
        return cls(int(count), share)


def nice_of(pid: int) -> int:
    """The scheduling niceness of ``pid`` (``/proc/<pid>/stat``)."""
    return int(stat_fields(pid)[16])


@contextlib.contextmanager
def running(neighbours: Neighbours) -> Iterator[list[subprocess.Popen[bytes]]]:
    """The neighbours' processes, for the duration of the block, each ready (its niceness
    set); what each says next is on its standard output (see ``BUSY_AFTER_S``)."""
    busy = neighbours.duty * PERIOD_S
    command = [
        *(sys.executable, "-c", _SPIN),
        *(repr(busy), repr(PERIOD_S - busy), str(os.getpid()), str(NICE), repr(BUSY_AFTER_S)),
    ]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(neighbours.count):
            procs.append(subprocess.Popen(command, stdout=subprocess.PIPE))
        for proc in procs:  # each has set its niceness, or found it may not
            assert proc.stdout is not None
            proc.stdout.readline()
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def describe(neighbours: Neighbours, procs: list[subprocess.Popen[bytes]]) -> str:
    nice = nice_of(procs[0].pid) if procs else 0
    return (
        f"beside {neighbours.count} neighbour process(es), each busy {neighbours.duty:.0%}"
        f" of every {PERIOD_S * 1e3:g} ms at nice {nice} (the machine's other tenants)"
    )

"""CPU seconds and peak memory of other processes, read from /proc (Linux).

The load benchmark charges each process its own CPU: the worker, the Postgres backends
serving the benchmark's database, Redis, the fake gateway and the raw client.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

_TICK = os.sysconf("SC_CLK_TCK")


def stat_fields(pid: int) -> list[bytes]:
    """The fields of ``/proc/<pid>/stat`` after the command name, from the state (field 3)
    on; OSError if the process is gone."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # The command name may hold spaces: fields are counted after its closing parenthesis.
    return stat[stat.rindex(b")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` (all its threads) so far; 0 if it is gone."""
    try:
        fields = stat_fields(pid)
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_ticks() -> tuple[int, int]:
    """The machine's (busy, total) CPU ticks so far, over all cores (``/proc/stat``)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def peak_rss_mb(pid: int) -> float:
    """The process's high-water resident set size (VmHWM), in MB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class CpuMeter:
    """CPU spent by a changing set of processes since ``start``.

    Processes first seen after the start (a pool's new connection) are charged all their
    CPU, since they were born during the measured run.
    """

    def __init__(self) -> None:
        self._baseline: dict[int, float] = {}
        self._latest: dict[int, float] = {}
        self._started = False

    def start(self, pids: Iterable[int]) -> None:
        self._baseline = {pid: cpu_seconds(pid) for pid in pids}
        self._latest = dict(self._baseline)
        self._started = True

    def sample(self, pids: Iterable[int]) -> None:
        for pid in pids:
            value = cpu_seconds(pid)
            if value or pid not in self._latest:
                self._latest[pid] = value
            self._baseline.setdefault(pid, 0.0)

    def total(self) -> float:
        return sum(self._latest[pid] - self._baseline[pid] for pid in self._latest)

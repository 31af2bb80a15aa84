"""CPU time the processes of a measured run spent, read from /proc (Linux).

Where target 1's time goes: the gunicorn workers, PostgreSQL (every server
process) and wrk itself, per acknowledged request, for bare Flask and /track.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system seconds of ``pid`` so far; 0 when it is gone."""
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def postgres_pids() -> list[int]:
    """Every PostgreSQL server process on this machine (backends and background workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@dataclass
class CpuUse:
    """Seconds of CPU during one measured run, by process group."""

    workers: float = 0.0
    postgres: float = 0.0
    wrk: float = 0.0

    def add(self, other: CpuUse) -> None:
        self.workers += other.workers
        self.postgres += other.postgres
        self.wrk += other.wrk


def _children_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def cpu_use(worker_pids: list[int]) -> Iterator[CpuUse]:
    """Measure the workers, PostgreSQL, and the children waited for inside (wrk)."""
    database = postgres_pids()
    before = {pid: cpu_seconds(pid) for pid in worker_pids + database}
    children = _children_seconds()
    use = CpuUse()
    yield use
    use.workers = sum(cpu_seconds(pid) - before[pid] for pid in worker_pids)
    use.postgres = sum(cpu_seconds(pid) - before.get(pid, 0.0) for pid in postgres_pids())
    use.wrk = _children_seconds() - children

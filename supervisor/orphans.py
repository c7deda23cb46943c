"""Worker pids recorded in the run directory, so a supervisor that starts after a crash of its predecessor
can stop any worker still running from it.

Workers already exit when their supervisor dies (the stdin lifeline); this is the second line of defence, for
a worker wedged where it cannot notice. One file per worker under run/workers/, created at spawn and removed
once the process is reaped: no shared file to rewrite, so nothing to corrupt when the supervisor is killed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path

import psutil

log = logging.getLogger("supervisor.orphans")


class WorkerRegistry:
    def __init__(self, run_dir: Path):
        self.dir = run_dir / "workers"
        self.dir.mkdir(parents=True, exist_ok=True)

    def add(self, pid: int) -> None:
        (self.dir / str(pid)).touch()

    def remove(self, pid: int) -> None:
        (self.dir / str(pid)).unlink(missing_ok=True)

    def sweep(self) -> list[int]:
        """Kill the process group of every recorded worker that is still running; returns their pids."""
        killed = []
        for entry in self.dir.iterdir():
            pid = int(entry.name) if entry.name.isdigit() else None
            if pid is not None and _is_our_worker(pid, self.dir.parent):
                log.warning("worker pid %d outlived its supervisor: killing its process group", pid)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                killed.append(pid)
            entry.unlink(missing_ok=True)
        return killed


def _is_our_worker(pid: int, run_dir: Path) -> bool:
    """The pid may have been reused since: only a worker started for this run directory qualifies."""
    try:
        cmdline = psutil.Process(pid).cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return "worker" in cmdline and any(str(run_dir) in arg for arg in cmdline)

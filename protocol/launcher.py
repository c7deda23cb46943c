"""The supervisor and the gateway end with the process that launched the stack, however it ended.

./scripts/start_server.sh exports MLX_SERVER_LAUNCHER_PID as its own pid, which becomes `uv run honcho`. The
process tree under it is uv -> honcho -> one reader process per Procfile entry -> `sh -c` (a session of its
own) -> uv -> python. A signal to the launcher's process group never reaches the supervisor or the gateway
(other sessions), and a parent-death signal would fire when their own `uv run` parent exits, not when honcho
does. So each of them watches the launcher's pid, and stops itself (SIGTERM, its graceful path) once that
process is gone: honcho killed, or crashed before it could forward a signal. Workers follow their supervisor
through their stdin lifeline.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import psutil

LAUNCHER_PID = "MLX_SERVER_LAUNCHER_PID"
log = logging.getLogger("launcher")


def exit_with_launcher(interval: float = 1.0) -> None:
    """If MLX_SERVER_LAUNCHER_PID names a process, SIGTERM this process once that one has gone."""
    value = os.environ.get(LAUNCHER_PID)
    if not value:
        return
    try:
        launcher = psutil.Process(int(value))
    except (ValueError, psutil.NoSuchProcess):
        log.warning("%s=%s is not a running process: stopping", LAUNCHER_PID, value)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    threading.Thread(target=_watch, args=(launcher, interval), name="launcher-watch", daemon=True).start()


def _watch(launcher: psutil.Process, interval: float) -> None:
    while _running(launcher):
        time.sleep(interval)
    log.warning("the launcher (pid %d) is gone: stopping", launcher.pid)
    os.kill(os.getpid(), signal.SIGTERM)


def _running(process: psutil.Process) -> bool:
    try:  # is_running() also notices a pid reused by another process since
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False

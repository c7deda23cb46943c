"""One spawned worker process as the supervisor sees it: how to start it, what it reported, how to stop it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time

from protocol import ErrorCode
from protocol.control import LoadFailed, MemoryReport, Ready
from protocol.launch import WorkerLaunch, worker_argv

log = logging.getLogger("supervisor.worker")


class WorkerStartError(RuntimeError):
    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = code


class WorkerProcess:
    def __init__(self, launch: WorkerLaunch, proc: asyncio.subprocess.Process):
        self.launch = launch
        self.model_id = launch.model_id
        self.endpoint = launch.data_endpoint
        self.instance_id = launch.instance_id
        self.proc = proc
        self.pid = proc.pid
        self.started_at = time.monotonic()
        self.ready: asyncio.Future[Ready] = asyncio.get_running_loop().create_future()
        self.memory: MemoryReport | None = None
        self.context_length: int | None = None
        self.compute = ""  # what the worker chose to compute with (Ready.compute)
        self.vocab_size: int | None = None  # Ready.vocab_size
        self.in_flight = 0
        self.queued = 0  # of in_flight, waiting for the generation thread
        self.pong_at = 0.0  # monotonic time of the last Ready or Pong: proof the generation loop turns
        self.identity: bytes | None = None  # its control socket's ZeroMQ identity, learnt from Hello
        self.wedged = False  # killed for answering no ping: a request may have caused it
        self.exited = asyncio.ensure_future(proc.wait())

    @classmethod
    async def spawn(cls, launch: WorkerLaunch) -> WorkerProcess:
        # Own process group: stopping it reaches anything the worker started. stdin is the lifeline pipe.
        proc = await asyncio.create_subprocess_exec(
            *worker_argv(launch), stdin=asyncio.subprocess.PIPE, start_new_session=True
        )
        log.info("spawned worker for %s: pid %d", launch.model_id, proc.pid)
        return cls(launch, proc)

    def on_ready(self, message: Ready) -> None:
        self.memory = message.memory
        self.context_length = message.context_length
        self.pong_at = time.monotonic()
        self.compute = message.compute
        self.vocab_size = message.vocab_size
        if not self.ready.done():
            self.ready.set_result(message)

    def on_load_failed(self, message: LoadFailed) -> None:
        if not self.ready.done():
            self.ready.set_exception(WorkerStartError(message.code, message.message))

    def on_exit(self) -> None:
        if not self.ready.done():
            code = self.proc.returncode
            self.ready.set_exception(
                WorkerStartError(ErrorCode.MODEL_LOAD_FAILED, f"worker exited during start-up ({describe_exit(code)})")
            )

    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started_at

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def stop(self, grace: float) -> int | None:
        """SIGTERM to the process group, up to `grace` seconds to drain, then SIGKILL. Returns the exit code."""
        if self.alive:
            self._signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self.exited), grace)
            except TimeoutError:
                log.warning("worker %s (pid %d) ignored SIGTERM for %.0fs: SIGKILL", self.model_id, self.pid, grace)
                self._signal_group(signal.SIGKILL)
        await self.exited
        self._signal_group(signal.SIGKILL)  # anything the worker started goes with it
        return self.proc.returncode

    def kill(self) -> None:
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)


KILLED_FROM_OUTSIDE = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def faulted(returncode: int | None) -> bool:
    """Did the process end itself (an error exit, a fault signal), rather than being killed by another process
    (SIGKILL, as the OOM killer sends; SIGTERM, SIGINT, SIGHUP)?"""
    return returncode is not None and (returncode >= 0 or -returncode not in KILLED_FROM_OUTSIDE)


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit code {returncode}"

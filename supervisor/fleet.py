"""The fleet: every configured model's slot, and the one entry point that gets a model served.

`ensure_loaded` decides internally whether to start a worker, wait for a load in progress, or wait for a stop
to finish and then start; callers never read a state and act on it. Everything here runs on one asyncio loop,
so a check and the action that follows it cannot be interleaved with another caller's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from protocol import ErrorCode
from protocol.control import Pong
from supervisor.config import Config
from supervisor.model_slot import ModelSlot, State
from supervisor.worker_process import WorkerProcess, WorkerStartError, describe_exit

log = logging.getLogger("supervisor.fleet")


class FleetError(Exception):
    def __init__(self, code: ErrorCode, message: str, retryable: bool = False):
        super().__init__(message)
        self.code = code
        self.retryable = retryable


STALE_EXIT_WAIT = 5.0  # how long a worker reported gone may take to be seen exiting

# Sends a Ping to a worker and waits for its Pong (None on timeout); provided by the daemon's socket layer.
Pinger = Callable[[WorkerProcess, float], Awaitable[Pong | None]]


class Fleet:
    def __init__(self, config: Config, run_dir: str, workers_endpoint: str):
        self.config = config
        self.run_dir = run_dir
        self.workers_endpoint = workers_endpoint
        self.slots = {spec.id: ModelSlot(spec, config.source_of(spec)) for spec in config.settings.models}
        self.by_instance: dict[str, WorkerProcess] = {}
        self.pinger: Pinger | None = None

    def slot(self, name: str) -> ModelSlot:
        spec = self.config.resolve(name)
        if spec is None:
            known = ", ".join(sorted(self.slots))
            raise FleetError(ErrorCode.MODEL_NOT_FOUND, f"The model '{name}' does not exist (known: {known})")
        return self.slots[spec.id]

    async def ensure_loaded(
        self, name: str, *, retry_failed: bool = False, stale_instance: str | None = None
    ) -> WorkerProcess:
        slot = self.slot(name)
        while True:
            if slot.state is State.READY:
                worker = slot.worker
                if worker.instance_id != stale_instance:
                    return worker
                # A gateway saw this worker's socket close, maybe before we saw its process exit.
                try:
                    await asyncio.wait_for(asyncio.shield(worker.exited), STALE_EXIT_WAIT)
                except TimeoutError:
                    return worker  # still running: the connection dropped, the worker did not
                stale_instance = None
                continue
            if slot.transition is not None:
                await _quietly(slot.transition)  # share the load (or stop) in progress, then look again
                if slot.state is State.FAILED and not retry_failed:
                    raise FleetError(ErrorCode.MODEL_LOAD_FAILED, f"{slot.spec.id}: {slot.last_error}")
                continue
            if slot.state is State.FAILED and not retry_failed:
                raise FleetError(
                    ErrorCode.MODEL_FAILED,
                    f"{slot.spec.id} failed to load ({slot.last_error}); "
                    f"an operator can retry with `supervisor ctl load {slot.spec.id}`",
                )
            retry_failed = False  # one retry per explicit load, not a loop
            slot.transition = asyncio.ensure_future(self._start(slot))

    async def unload(self, name: str) -> int | None:
        slot = self.slot(name)
        while True:
            if slot.transition is not None:
                await _quietly(slot.transition)
                continue
            if slot.state is not State.READY:
                return None
            pid = slot.worker.pid
            slot.transition = asyncio.ensure_future(self._stop(slot))
            await _quietly(slot.transition)
            return pid

    async def _start(self, slot: ModelSlot) -> None:
        slot.state, slot.last_error = State.STARTING, None
        worker = None
        try:
            worker = await WorkerProcess.spawn(
                slot.spec.id,
                slot.source,
                self.run_dir,
                self.workers_endpoint,
                slot.spec.context_length,
                self.config.settings.shutdown_grace_seconds,
                slot.spec.engine.worker_args(),
            )
            slot.worker = worker
            self.by_instance[worker.instance_id] = worker
            worker.exited.add_done_callback(lambda _: self._on_exit(slot, worker))
            ready = await asyncio.wait_for(asyncio.shield(worker.ready), self.config.settings.load_timeout_seconds)
            slot.state = State.READY
            log.info(
                "%s ready in %.1fs on %s, %s (pid %d)",
                slot.spec.id, ready.load_seconds, ready.device, ready.compute, worker.pid,
            )  # fmt: skip
        except (WorkerStartError, TimeoutError, OSError) as exc:
            message = str(exc) or f"no Ready within {self.config.settings.load_timeout_seconds:.0f}s"
            log.error("%s failed to start: %s", slot.spec.id, message)
            slot.state, slot.last_error, slot.worker = State.FAILED, message, None
            if worker is not None:
                worker.kill()
                await worker.exited
                self.by_instance.pop(worker.instance_id, None)
        finally:
            slot.transition = None

    async def _stop(self, slot: ModelSlot) -> None:
        worker = slot.worker
        slot.state = State.STOPPING
        try:
            code = await worker.stop(self.config.settings.shutdown_grace_seconds)
            log.info("%s stopped (pid %d, %s)", slot.spec.id, worker.pid, describe_exit(code))
        finally:
            self.by_instance.pop(worker.instance_id, None)
            slot.state, slot.worker, slot.transition = State.STOPPED, None, None

    def _on_exit(self, slot: ModelSlot, worker: WorkerProcess) -> None:
        worker.on_exit()
        if slot.worker is worker and slot.state is State.READY:
            # A crash: the gateway fails the requests in flight when its connection drops; the next
            # request for this model starts a new worker.
            slot.last_error = f"worker pid {worker.pid} crashed ({describe_exit(worker.proc.returncode)})"
            log.error("%s: %s", slot.spec.id, slot.last_error)
            slot.state, slot.worker = State.STOPPED, None
            self.by_instance.pop(worker.instance_id, None)

    async def ping(self, slot: ModelSlot, timeout: float) -> tuple[bool, float | None]:
        worker = slot.worker
        if slot.state is not State.READY or worker is None or self.pinger is None:
            return False, None
        started = time.perf_counter()
        pong = await self.pinger(worker, timeout)
        if pong is None:
            return False, None
        return True, (time.perf_counter() - started) * 1000

    def on_pong(self, pong: Pong) -> None:
        worker = self.by_instance.get(pong.instance_id)
        if worker is not None:
            worker.memory = pong.memory
            worker.in_flight = pong.in_flight + pong.queued

    async def auto_load(self) -> None:
        specs = [s for s in self.config.settings.models if s.auto_load]
        await asyncio.gather(*(_quietly(self.ensure_loaded(s.id)) for s in specs))

    async def stop_all(self) -> None:
        await asyncio.gather(*(_quietly(self.unload(model_id)) for model_id in self.slots))


async def _quietly(awaitable) -> None:
    """Await a shared transition whose outcome the caller reads from the slot, not from the exception."""
    with contextlib.suppress(Exception):
        await asyncio.shield(awaitable) if isinstance(awaitable, asyncio.Future) else await awaitable

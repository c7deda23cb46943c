"""The fleet: every configured model's slot, and the one entry point that gets a model served.

`ensure_loaded` decides internally whether to start a worker, wait for a load in progress, wait for a stop to
finish and then start, or wait for memory held by busy models; callers never read a state and act on it.
The fleet moves slots through their state machine (model_slot.TRANSITIONS, by `ModelSlot.move` only), asks the
MemoryBudget for room and carries out its plans: it spawns, evicts and stops; the budget only decides.
Everything here runs on one asyncio loop, so a check and the action that follows it cannot be interleaved with
another caller's unless an `await` stands between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from protocol import ErrorCode
from protocol.control import ModelType, Pong
from protocol.ctl import ModelInfo
from protocol.launch import LlamaCppSettings, WorkerLaunch, new_instance_id, worker_endpoint
from supervisor.config import GB, Config, ModelSpec
from supervisor.host import Host
from supervisor.memory_budget import MemoryBudget
from supervisor.model_slot import IllegalTransition, ModelSlot, State
from supervisor.orphans import WorkerRegistry
from supervisor.worker_process import WorkerProcess, WorkerStartError, describe_exit, faulted

log = logging.getLogger("supervisor.fleet")


class FleetError(Exception):
    def __init__(self, code: ErrorCode, message: str, retryable: bool = False):
        super().__init__(message)
        self.code = code
        self.retryable = retryable


STALE_EXIT_WAIT = 5.0  # how long a worker reported gone may take to be seen exiting
FAULTS_KEPT = 256  # crashed instances remembered as faulted, for the EnsureLoaded that names one stale
ROOM_POLL_SECONDS = 0.5  # while waiting for memory: how often busy models are pinged for their in-flight count

# Sends a Ping to a worker and waits for its Pong (None on timeout); provided by the daemon's socket layer.
Pinger = Callable[[WorkerProcess, float], Awaitable[Pong | None]]


class Fleet:
    def __init__(
        self, config: Config, run_dir: str, workers_endpoint: str, registry: WorkerRegistry, host: Host | None = None
    ):
        self.config = config
        self.settings = config.settings
        self.run_dir = run_dir
        self.workers_endpoint = workers_endpoint
        self.registry = registry
        self.host = host  # in a fleet: workers bind on its TCP address, as CURVE servers
        self.budget = MemoryBudget(int(config.memory_budget_gb * GB), host.name if host else "")
        self.slots: dict[str, ModelSlot] = {}  # the models this host serves
        for spec in filter(config.runs_here, self.settings.models):
            slot = ModelSlot(spec, config.source_of(spec), self.budget.open(spec.id), config.draft_source_of(spec))
            self.budget.estimate(slot.charge, spec, slot.source, slot.draft_source)
            self.slots[spec.id] = slot
        self.by_instance: dict[str, WorkerProcess] = {}
        self.faulted: dict[str, None] = {}  # ids of instances whose crash a request may have caused, oldest first
        self.pinger: Pinger | None = None
        self.waiting = 0  # callers of ensure_loaded waiting for a load
        self.closing = False  # the supervisor is stopping: no new loads
        self._changed = asyncio.Event()  # set (and replaced) whenever memory may have been freed

    def resolve(self, name: str, allowed: list[str] | None = None, fallback: bool = False) -> ModelSpec:
        """The model `name` resolves to, for a caller limited to `allowed` models; FleetError if there is none or
        the caller may not use it. With `fallback`, a name that leads nowhere gets the fallback model (if
        configured and allowed). The same answer on every host of a fleet: they share the config's names."""
        spec = self.config.resolve(name)
        spare = self.config.resolve(name, fallback=True) if spec is None and fallback else None
        if spare is not None and self.config.allows(spare, allowed):  # else: not found, as without a fallback
            log.info("'%s' names no model: the fallback model %s answers", name, spare.id)
            spec = spare
        if spec is not None and not self.config.allows(spec, allowed):
            raise FleetError(
                ErrorCode.MODEL_NOT_ALLOWED,
                f"The model '{name or spec.id}' is not available to this API key (allowed: {', '.join(allowed)})",
            )
        if spec is None:
            reason = self.config.why_unknown(name, allowed)
            raise FleetError(ErrorCode.MODEL_NOT_FOUND, reason[0].upper() + reason[1:])
        return spec

    def slot(self, name: str, allowed: list[str] | None = None, fallback: bool = False) -> ModelSlot:
        """The slot of the model `name` resolves to (see resolve), if it runs on this host."""
        spec = self.resolve(name, allowed, fallback)
        if spec.id not in self.slots:
            here, hosts = self.config.host.name, ", ".join(spec.hosts)
            raise FleetError(ErrorCode.MODEL_NOT_FOUND, f"{spec.id} does not run on host {here} (only on {hosts})")
        return self.slots[spec.id]

    def info(self, slot: ModelSlot, **more) -> ModelInfo:
        """A slot's ModelInfo, with every alias of its model (those added at run time too)."""
        return slot.info(aliases=self.config.names.aliases_of(slot.spec.id), **more)

    async def ensure_loaded(
        self,
        name: str,
        *,
        retry_failed: bool = False,
        stale_instance: str | None = None,
        allowed: list[str] | None = None,
        fallback: bool = False,
    ) -> tuple[WorkerProcess, list[str]]:
        """The ready worker for `name` (see `slot`), and the models evicted by the load this call waited for."""
        slot = self.slot(name, allowed, fallback)
        evicted: list[str] = []
        while True:
            if self.closing:
                raise FleetError(ErrorCode.SHUTTING_DOWN, "the supervisor is shutting down", retryable=True)
            if slot.state is State.READY:
                worker = slot.worker
                if worker.instance_id != stale_instance:
                    slot.last_used = time.monotonic()
                    return worker, evicted
                # A gateway saw this worker's socket close, maybe before we saw its process exit.
                try:
                    await asyncio.wait_for(asyncio.shield(worker.exited), STALE_EXIT_WAIT)
                except TimeoutError:
                    slot.last_used = time.monotonic()
                    return worker, evicted  # still running: the connection dropped, the worker did not
                stale_instance = None
                continue
            if slot.transition is not None:
                evicted = await self._wait_for(slot) or evicted
                if slot.state is State.FAILED and not retry_failed:
                    raise FleetError(ErrorCode.MODEL_LOAD_FAILED, f"{slot.spec.id}: {slot.last_error}")
                continue
            if slot.state is State.FAILED and not retry_failed:
                raise FleetError(
                    ErrorCode.MODEL_FAILED,
                    f"{slot.spec.id} failed ({slot.last_error}); "
                    f"an operator can retry with `supervisor ctl load {slot.spec.id}`",
                )
            retry_failed = False  # one retry per explicit load, not a loop
            slot.transition = asyncio.ensure_future(self._start(slot))

    async def _wait_for(self, slot: ModelSlot) -> list[str] | None:
        """Share the transition in progress. A load refused for lack of memory fails every caller that shared
        it; other outcomes are read from the slot's state by the caller."""
        if self.waiting >= self.settings.max_waiting_requests:
            raise FleetError(
                ErrorCode.WORKER_UNAVAILABLE,
                f"{self.waiting} requests are already waiting for models to load; try again shortly",
                retryable=True,
            )
        self.waiting += 1
        try:
            return await asyncio.shield(slot.transition)
        except (FleetError, IllegalTransition):  # the latter a bug: the call fails rather than retry forever
            raise
        except Exception:
            return None
        finally:
            self.waiting -= 1

    async def unload(self, name: str, reason: str = "unloading on request") -> int | None:
        slot = self.slot(name)
        slot.crashed = False  # the operator wants it down: no longer a crash waiting for a reload
        while True:
            if slot.transition is not None:
                await _quietly(slot.transition)
                continue
            if slot.state is not State.READY:
                return None
            pid = slot.worker.pid
            self._begin_stop(slot, reason)
            await _quietly(slot.transition)
            return pid

    def pin(self, name: str, pinned: bool) -> ModelSlot:
        slot = self.slot(name)
        slot.pinned = pinned
        return slot

    # -- transitions -------------------------------------------------------------------------------------

    async def _start(self, slot: ModelSlot) -> list[str]:
        worker = None
        try:
            again = "" if slot.state is State.STOPPED else " again, as an operator asked"
            slot.move(State.STARTING, f"loading{again}")
            slot.last_error = None
            self.budget.estimate(slot.charge, slot.spec, slot.source, slot.draft_source)
            victims = await self._make_room(slot)
            worker = await WorkerProcess.spawn(self._launch(slot), slot.spec.shard, self.host)
            for pid in worker.pids:
                self.registry.add(pid)
            slot.worker = worker
            self.budget.attach(slot.charge, worker)
            self.by_instance[worker.instance_id] = worker
            worker.exited.add_done_callback(lambda _: self._on_exit(slot, worker))
            await self._start_peers(slot, worker)
            ready = await asyncio.wait_for(asyncio.shield(worker.ready), self.settings.load_timeout_seconds)
            slot.last_used, slot.crashed = time.monotonic(), False
            where = f"{ready.device}, {ready.compute} (pid {worker.pid})"
            slot.move(State.READY, f"ready in {ready.load_seconds:.1f}s on {where}")
            return victims
        except FleetError as exc:
            slot.last_error = str(exc)
            slot.move(State.STOPPED, f"not started: {exc}", logging.WARNING)
            raise
        except (WorkerStartError, TimeoutError, OSError) as exc:
            message = str(exc) or f"no Ready within {self.settings.load_timeout_seconds:.0f}s"
            if worker is not None:
                worker.kill()
                await worker.exited
            slot.last_error, slot.worker = message, None
            slot.move(State.FAILED, f"failed to start: {message}", logging.ERROR)
            raise
        finally:
            if slot.state is not State.READY:
                self.budget.release(slot.charge)
            slot.transition = None
            self._notify()

    async def _start_peers(self, slot: ModelSlot, worker: WorkerProcess) -> None:
        """A model sharded over hosts: their ranks, now that rank 0 is known here. Another host without room
        refuses the load as this host's budget would (the model stays stopped, the caller may retry)."""
        try:
            await worker.start_peers()
        except WorkerStartError as exc:
            if exc.code not in (ErrorCode.WORKER_UNAVAILABLE, ErrorCode.INSUFFICIENT_MEMORY):
                raise
            worker.kill()
            await worker.exited
            slot.worker = None
            raise FleetError(exc.code, str(exc), retryable=exc.code is ErrorCode.WORKER_UNAVAILABLE) from None

    def _launch(self, slot: ModelSlot) -> WorkerLaunch:
        return self.launch(slot.spec, slot.source, slot.charge.estimate, slot.draft_source)

    def launch(self, spec: ModelSpec, source: str, charge_bytes: int, draft_source: str | None = None) -> WorkerLaunch:
        """A worker's launch for `spec` on this host: a slot's, or the ranks it runs for another host's model."""
        return WorkerLaunch(
            model_id=spec.id,
            instance_id=new_instance_id(),
            source=source,
            model_type=ModelType(spec.type),
            context_length=spec.context_length,
            draft_source=draft_source,
            engine=spec.engine,
            llama_cpp=spec.llama_cpp or LlamaCppSettings(),
            data_endpoint=worker_endpoint(self.run_dir, spec.id, self.host and self.host.data_address),
            curve=self.host and self.host.worker_curve(),
            supervisor_endpoint=self.workers_endpoint,
            shutdown_grace=self.settings.shutdown_grace_seconds,
            exit_with_stdin=True,
            memory_charge_bytes=charge_bytes,
        )

    async def _make_room(self, slot: ModelSlot) -> list[str]:
        """Have `slot` granted its estimate, evicting the idle models the budget's plan names (and waiting for them
        to exit), or waiting while busy models hold the memory; returns the ids of the evicted models."""
        budget = self.budget
        if budget.exceeds(slot.charge):
            raise FleetError(
                ErrorCode.INSUFFICIENT_MEMORY,
                f"{slot.spec.id} needs {slot.charge.estimate / GB:.2f} GB, more than the whole memory budget "
                f"({budget.total / GB:.2f} GB)",
            )
        deadline = time.monotonic() + self.settings.max_wait_seconds
        others = [s for s in self.slots.values() if s is not slot]
        while (victims := budget.plan(slot.charge, others)) is None:
            if self.closing:
                raise FleetError(ErrorCode.SHUTTING_DOWN, "the supervisor is shutting down", retryable=True)
            if time.monotonic() >= deadline:
                raise FleetError(ErrorCode.WORKER_UNAVAILABLE, self._no_room(slot, others), retryable=True)
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), ROOM_POLL_SECONDS)
            await self._refresh(s for s in others if s.state is State.READY and not s.idle)
        # Decided: from here to the first await nothing else runs, so the victims and the grant are one step.
        budget.grant(slot.charge)
        return await self.evict(victims, slot.spec.id)

    async def evict(self, victims: list[ModelSlot], room_for: str) -> list[str]:
        """Stop the idle models a budget plan named, to make room for `room_for`; returns once they have exited."""
        for victim in victims:
            victim.evictions += 1
            idle = time.monotonic() - victim.last_used
            self._begin_stop(victim, f"evicted to make room for {room_for} (idle {idle:.0f}s)")
        await asyncio.gather(*(_quietly(v.transition) for v in victims if v.transition is not None))
        return [v.spec.id for v in victims]

    def _no_room(self, slot: ModelSlot, others: list[ModelSlot]) -> str:
        def why(s: ModelSlot) -> str:
            if s.state is State.READY:
                return "pinned" if s.pinned else f"{s.worker.in_flight} in flight"
            return s.state.value

        holders = ", ".join(f"{s.spec.id} ({s.charge.bytes / GB:.2f} GB, {why(s)})" for s in others if s.charge.bytes)
        return (
            f"no memory for {slot.spec.id} ({slot.charge.estimate / GB:.2f} GB) after "
            f"{self.settings.max_wait_seconds:.0f}s: the {self.budget.total / GB:.2f} GB budget is held by models "
            f"that are busy or pinned: {holders}"
        )

    def _begin_stop(self, slot: ModelSlot, reason: str) -> None:
        slot.move(State.STOPPING, reason)  # at once, so no one hands this worker out meanwhile
        slot.transition = asyncio.ensure_future(self._stop(slot))

    async def _stop(self, slot: ModelSlot) -> None:
        worker = slot.worker
        try:
            await worker.stop(self.settings.shutdown_grace_seconds)
        finally:
            self._forget(worker)
            slot.worker, slot.transition = None, None
            self.budget.release(slot.charge)
            slot.move(State.STOPPED, f"stopped (pid {worker.pid}, {describe_exit(worker.proc.returncode)})")
            self._notify()

    def _on_exit(self, slot: ModelSlot, worker: WorkerProcess) -> None:
        worker.on_exit()
        worker.kill()  # its process groups: whatever the worker started (a gguf worker's llama-server) goes too
        for pid in worker.pids:
            self.registry.remove(pid)
        self._forget(worker)
        if slot.worker is not worker or slot.state is not State.READY:
            return  # an exit the start or the stop in progress expected and handles
        # A crash: the gateway fails the requests in flight when its connection drops; the next request for
        # this model starts a new worker, unless it keeps crashing.
        crashes = slot.record_crash(time.monotonic(), self.settings.crash_window_seconds)
        if worker.wedged or faulted(worker.proc.returncode):
            self.faulted[worker.instance_id] = None
            if len(self.faulted) > FAULTS_KEPT:
                del self.faulted[next(iter(self.faulted))]
        slot.crashed, slot.worker = True, None
        slot.last_error = (
            f"worker pid {worker.pid} crashed ({worker.rank_failure or describe_exit(worker.proc.returncode)})"
        )
        if failed := crashes > self.settings.crash_limit:
            slot.last_error += f"; {crashes} crashes within {self.settings.crash_window_seconds:.0f}s"
        self.budget.release(slot.charge)
        slot.move(State.FAILED if failed else State.STOPPED, slot.last_error, logging.ERROR)
        self._notify()

    def _forget(self, worker: WorkerProcess) -> None:
        self.by_instance.pop(worker.instance_id, None)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- heartbeats and housekeeping ---------------------------------------------------------------------

    async def ping(self, slot: ModelSlot, timeout: float) -> tuple[bool, float | None]:
        worker = slot.worker
        if slot.state is not State.READY or worker is None or self.pinger is None:
            return False, None
        started = time.perf_counter()
        pong = await self.pinger(worker, timeout)
        if pong is None:
            return False, None
        return True, (time.perf_counter() - started) * 1000

    async def _refresh(self, slots) -> None:
        await asyncio.gather(*(self.ping(s, ROOM_POLL_SECONDS * 2) for s in slots))

    def on_pong(self, pong: Pong) -> None:
        worker = self.by_instance.get(pong.instance_id)
        if worker is None:
            return
        worker.memory, worker.pong_at = pong.memory, time.monotonic()
        worker.in_flight, worker.queued = pong.in_flight + pong.queued, pong.queued
        slot = self.slots.get(worker.model_id)
        if worker.in_flight:
            slot.last_used = worker.pong_at
        elif slot.idle:
            self._notify()  # an idle model can be evicted: wake loads waiting for memory

    async def housekeeping(self) -> None:
        """Once a heartbeat: ping every ready worker, kill the wedged, unload the idle past their TTL."""
        await self._refresh(s for s in self.slots.values() if s.state is State.READY)
        now = time.monotonic()
        for slot in self.slots.values():
            worker = slot.worker
            if slot.state is not State.READY or worker is None:
                continue
            if now - worker.pong_at > self.settings.heartbeat_timeout_seconds:
                log.error("%s (pid %d) answered no ping for %.0fs: killing it", slot.spec.id, worker.pid,
                          now - worker.pong_at)  # fmt: skip
                worker.wedged = True
                worker.kill()  # its exit is handled as a crash
            elif slot.idle_expired(now, self.settings.idle_ttl_seconds):
                self._begin_stop(slot, f"idle for {now - slot.last_used:.0f}s: unloading")

    async def auto_load(self) -> None:
        specs = [s.spec for s in self.slots.values() if s.spec.auto_load or s.spec.pinned]
        await asyncio.gather(*(_quietly(self.ensure_loaded(s.id)) for s in specs))

    async def stop_all(self) -> None:
        self.closing = True
        for slot in self.slots.values():  # a load in progress is abandoned, not awaited: it can take minutes
            if slot.state is State.STARTING and slot.worker is not None:
                slot.worker.kill()
        stopping = "unloading: the supervisor stops"
        await asyncio.gather(*(_quietly(self.unload(model_id, stopping)) for model_id in self.slots))


async def _quietly(awaitable) -> None:
    """Await a shared transition whose outcome the caller reads from the slot, not from the exception."""
    with contextlib.suppress(Exception):
        await asyncio.shield(awaitable) if isinstance(awaitable, asyncio.Future) else await awaitable

"""One configured model on this host: its lifecycle state machine (after llama-swap's process state machine),
its worker, its charge against the memory budget, and what it has been through.

    stopped --load--> starting --Ready--> ready --unload, eviction, idle TTL--> stopping --exited--> stopped
    starting --refused for memory--> stopped      ready --crash--> stopped (the next request starts it again)
    starting --load fails--> failed               ready --too many crashes--> failed
    failed --operator load (`ctl load`)--> starting

TRANSITIONS is that diagram as data; `ModelSlot.move` is the only code that changes a slot's state: it refuses
any other transition, logs each with its reason and counts it. Only the fleet moves a slot, and a load or stop
runs as one asyncio task (`transition`) that every caller arriving meanwhile awaits instead of starting its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque

from protocol.control import ModelType
from protocol.ctl import ModelInfo, RankInfo
from protocol.ctl import ModelState as State
from supervisor.config import ModelSpec
from supervisor.memory_budget import Charge
from supervisor.worker_process import WorkerProcess

log = logging.getLogger("supervisor.fleet")

# (from, to) -> when it happens. Nothing else is allowed.
TRANSITIONS: dict[tuple[State, State], str] = {
    (State.STOPPED, State.STARTING): "a request or an operator asks for the model",
    (State.FAILED, State.STARTING): "an operator loads it again (`ctl load`)",
    (State.STARTING, State.READY): "its worker reported Ready",
    (State.STARTING, State.STOPPED): "refused before a worker was spawned: no memory, or the supervisor is stopping",
    (State.STARTING, State.FAILED): "its worker failed to load, exited or sent no Ready in time",
    (State.READY, State.STOPPING): "unloaded, evicted for another model, or idle past its TTL",
    (State.READY, State.STOPPED): "its worker crashed; the next request starts it again",
    (State.READY, State.FAILED): "its worker crashed more than crash_limit times within crash_window_seconds",
    (State.STOPPING, State.STOPPED): "its worker exited",
}

# A model handed to a gateway is busy until a pong received this much later says nothing is in flight:
# the request it was handed out for may still be on its way to the worker.
LEASE_SECONDS = 1.0


class IllegalTransition(RuntimeError):
    """A move the table does not allow: a bug in the fleet, never a user's doing."""

    def __init__(self, model_id: str, current: State, to: State):
        super().__init__(f"{model_id}: no transition from {current} to {to}")
        self.model_id, self.current, self.to = model_id, current, to


class ModelSlot:
    state: State = State.STOPPED  # changed by `move` only

    def __init__(self, spec: ModelSpec, source: str, charge: Charge, draft_source: str | None = None):
        self.spec = spec
        self.source = source
        self.draft_source = draft_source  # loaded into the same worker, for speculative decoding
        self.charge = charge  # what it counts against the memory budget (changed by the budget only)
        self.worker: WorkerProcess | None = None
        self.transition: asyncio.Future | None = None
        self.last_error: str | None = None
        self.pinned = spec.pinned
        self.last_used = time.monotonic()  # last handed to a gateway, or last seen with requests in flight
        self.crashes: deque[float] = deque()
        self.transitions: Counter[tuple[State, State]] = Counter()  # since the supervisor started
        self.evictions = 0  # of the ready -> stopping transitions, those that made room for another model
        self.crashed = False  # its worker crashed; cleared by the next load or an unload

    def move(self, to: State, reason: str, level: int = logging.INFO) -> None:
        """Change state: checked against TRANSITIONS (IllegalTransition otherwise), logged with `reason`
        as "<model> <reason> (<from> -> <to>)", and counted."""
        edge = (self.state, to)
        if edge not in TRANSITIONS:
            raise IllegalTransition(self.spec.id, *edge)
        log.log(level, "%s %s (%s -> %s)", self.spec.id, reason, *edge)
        self.transitions[edge] += 1
        self.state = to

    @property
    def loads(self) -> int:
        """Workers that became ready since the supervisor started."""
        return self.transitions[State.STARTING, State.READY]

    @property
    def crash_count(self) -> int:
        return self.transitions[State.READY, State.STOPPED] + self.transitions[State.READY, State.FAILED]

    @property
    def priority(self) -> int:
        return self.spec.priority

    @property
    def idle(self) -> bool:
        """Loaded, nothing in flight, and that known from a pong newer than the last hand-out."""
        worker = self.worker
        return (
            self.state is State.READY
            and worker is not None
            and worker.in_flight == 0
            and worker.pong_at - self.last_used >= LEASE_SECONDS
        )

    @property
    def evictable(self) -> bool:
        return not self.pinned and self.transition is None and self.idle

    def idle_expired(self, now: float, default_ttl: float) -> bool:
        ttl = self.spec.idle_ttl_seconds if self.spec.idle_ttl_seconds is not None else default_ttl
        return ttl > 0 and self.evictable and now - self.last_used >= ttl

    def record_crash(self, now: float, window: float) -> int:
        """Note a crash; returns how many fell within the last `window` seconds."""
        self.crashes.append(now)
        while self.crashes and self.crashes[0] < now - window:
            self.crashes.popleft()
        return len(self.crashes)

    def info(
        self, alive: bool | None = None, ping_ms: float | None = None, aliases: list[str] | None = None
    ) -> ModelInfo:
        """What a ctl reply says of it; `aliases`: all its names (those added at run time too), else the config's."""
        worker = self.worker
        memory = worker.memory.resident_bytes if worker and worker.memory else 0
        return ModelInfo(
            id=self.spec.id,
            aliases=list(self.spec.aliases) if aliases is None else aliases,
            type=ModelType(self.spec.type),
            source=self.spec.source,
            state=self.state,
            context_length=(worker and worker.context_length) or self.spec.context_length or 0,
            memory_estimate_bytes=self.charge.estimate,
            memory_bytes=memory,
            charged_bytes=self.charge.bytes,
            pinned=self.pinned,
            priority=self.priority,
            pid=worker.pid if worker else None,
            uptime_seconds=worker.uptime if worker else None,
            idle_seconds=time.monotonic() - self.last_used if worker else None,
            in_flight=worker.in_flight if worker else 0,
            last_error=self.last_error,
            alive=alive,
            ping_ms=ping_ms,
            compute=worker.compute if worker else "",
            queued=worker.queued if worker else 0,
            worker_memory=worker.memory if worker else None,
            loads=self.loads,
            evictions=self.evictions,
            crashes=self.crash_count,
            crashed=self.crashed,
            transitions={f"{a}->{b}": n for (a, b), n in self.transitions.items()},
            ranks=rank_infos(worker) if worker and worker.followers else [],
            shard_mode=self.spec.shard.mode if self.spec.shard else "",
        )


def rank_infos(worker: WorkerProcess) -> list[RankInfo]:
    """Each rank of a sharded model's worker: rank 0 as it reports itself, the others as their host sees them (this
    one's RSS, another's as its last lease answer said)."""
    ranks = [RankInfo(rank=0, pid=worker.pid, memory_bytes=worker.memory.resident_bytes if worker.memory else 0)]
    ranks += [RankInfo(rank=f.rank, pid=f.pid, host=f.host, memory_bytes=f.memory_bytes) for f in worker.followers]
    return ranks

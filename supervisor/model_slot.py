"""Per-model lifecycle state (after llama-swap's process state machine).

    stopped --start--> starting --Ready--> ready --unload/evict/idle--> stopping --> stopped
                          |                  |
                          +--fails--> failed +--crash--> stopped (the next request starts it again)
                                             +--too many crashes--> failed (until an operator loads it)

Only the fleet changes a slot, and only inside one asyncio task at a time per transition: `transition` is the
load or stop in progress, which every caller that arrives meanwhile awaits instead of starting its own.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from protocol.control import ModelType
from protocol.ctl import ModelInfo
from protocol.ctl import ModelState as State
from supervisor.config import ModelSpec
from supervisor.worker_process import WorkerProcess

# A model handed to a gateway is busy until a pong received this much later says nothing is in flight:
# the request it was handed out for may still be on its way to the worker.
LEASE_SECONDS = 1.0


class ModelSlot:
    def __init__(self, spec: ModelSpec, source: str, draft_source: str | None = None):
        self.spec = spec
        self.source = source
        self.draft_source = draft_source  # loaded into the same worker, for speculative decoding
        self.state = State.STOPPED
        self.worker: WorkerProcess | None = None
        self.transition: asyncio.Future | None = None
        self.last_error: str | None = None
        self.pinned = spec.pinned
        self.estimate = 0  # bytes; the fleet sets it, and again before each load (the files may change)
        self.room_granted = False  # a starting model holds its estimate once the budget has made room for it
        self.last_used = time.monotonic()  # last handed to a gateway, or last seen with requests in flight
        self.crashes: deque[float] = deque()
        self.loads = self.evictions = self.crash_count = 0  # since the supervisor started
        self.crashed = False  # its worker crashed; cleared by the next load or an unload

    @property
    def priority(self) -> int:
        return self.spec.priority

    @property
    def charge(self) -> int:
        """Bytes this model counts against the budget now (see memory_budget)."""
        if self.state is State.STARTING:
            return self.estimate if self.room_granted else 0
        if self.state in (State.READY, State.STOPPING) and self.worker is not None:
            reported = self.worker.memory.resident_bytes if self.worker.memory else 0
            return max(self.estimate, reported)
        return 0

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

    def info(self, alive: bool | None = None, ping_ms: float | None = None) -> ModelInfo:
        worker = self.worker
        memory = worker.memory.resident_bytes if worker and worker.memory else 0
        return ModelInfo(
            id=self.spec.id,
            aliases=list(self.spec.aliases),
            type=ModelType(self.spec.type),
            source=self.spec.source,
            state=self.state,
            context_length=(worker and worker.context_length) or self.spec.context_length or 0,
            memory_estimate_bytes=self.estimate,
            memory_bytes=memory,
            charged_bytes=self.charge,
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
        )

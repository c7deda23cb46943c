"""Per-model lifecycle state (after llama-swap's process state machine).

    stopped --start--> starting --Ready--> ready --unload--> stopping --> stopped
                          |                  |
                          +--fails--> failed +--crash--> stopped (the next request starts it again)

Only the fleet changes a slot, and only inside one asyncio task at a time per transition: `transition` is the
load or stop in progress, which every caller that arrives meanwhile awaits instead of starting its own.
"""

from __future__ import annotations

import asyncio
from enum import StrEnum

from protocol.ctl import ModelInfo
from supervisor.config import ModelSpec
from supervisor.worker_process import WorkerProcess


class State(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"


class ModelSlot:
    def __init__(self, spec: ModelSpec, source: str):
        self.spec = spec
        self.source = source
        self.state = State.STOPPED
        self.worker: WorkerProcess | None = None
        self.transition: asyncio.Future | None = None
        self.last_error: str | None = None

    def info(self, alive: bool | None = None, ping_ms: float | None = None) -> ModelInfo:
        worker = self.worker
        memory = worker.memory.resident_bytes if worker and worker.memory else 0
        return ModelInfo(
            id=self.spec.id,
            aliases=list(self.spec.aliases),
            type=self.spec.type,
            source=self.spec.source,
            state=self.state.value,
            context_length=(worker and worker.context_length) or self.spec.context_length or 0,
            memory_estimate_bytes=self.spec.memory_estimate_bytes,
            memory_bytes=memory,
            pid=worker.pid if worker else None,
            uptime_seconds=worker.uptime if worker else None,
            in_flight=worker.in_flight if worker else 0,
            last_error=self.last_error,
            alive=alive,
            ping_ms=ping_ms,
            compute=worker.compute if worker else "",
        )

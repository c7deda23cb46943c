"""Calls to the supervisor from gateways and the operator CLI. Every call carries `call_id`; the reply
(a result or CallFailed) carries the same id and resolves exactly one waiting future."""

from __future__ import annotations

from enum import StrEnum

import msgspec

from protocol.codec import Message, decoder
from protocol.control import MemoryReport, ModelType
from protocol.errors import ErrorCode
from protocol.generation import SamplingDefaults
from protocol.store import STORE_CALLS, STORE_REPLIES


class ModelState(StrEnum):
    """Where a model is in its lifecycle on a host (supervisor/model_slot.py holds the allowed transitions)."""

    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"


class EnsureLoaded(Message, tag="ensure_loaded"):
    """Where does `model` (id or alias) live? Loads it first if needed; one load serves every caller."""

    call_id: str
    model: str
    # The instance the caller was last given and found gone (its connection dropped): the supervisor
    # waits to see that process exit and starts a new one instead of handing the dead one out again.
    stale_instance: str | None = None
    # The models (ids or aliases) the calling service may use; None: any. Checked after `model` is resolved,
    # so an alias of an allowed model is allowed; another model fails with `model_not_allowed`.
    allowed: list[str] | None = None
    # A named preset of the config's `presets:` the request selected; an unknown one fails with invalid_request
    # before anything is loaded.
    preset: str | None = None


class Load(Message, tag="load"):
    call_id: str
    model: str


class Unload(Message, tag="unload"):
    call_id: str
    model: str


class Pin(Message, tag="pin"):
    """Pin (or unpin) a model: a pinned model is never evicted to make room for another."""

    call_id: str
    model: str
    pinned: bool = True


class ListModels(Message, tag="list_models"):
    call_id: str
    allowed: list[str] | None = None  # only these models (ids or aliases, as in EnsureLoaded); None: all


class Status(Message, tag="status"):
    """Supervisor status; pings every live worker (through its generation loop) before answering."""

    call_id: str
    ping_timeout: float = 2.0


class Located(Message, tag="located"):
    call_id: str
    model_id: str
    endpoint: str
    instance_id: str
    evicted: list[str] = []  # models stopped to make room for this load (for the caller that waited on it)
    # What the request may leave unset, for this model (and the preset asked for): the preset over the model's
    # `defaults:` over the global ones. The gateway fills a request's unset fields with them.
    defaults: SamplingDefaults = SamplingDefaults()


class Unloaded(Message, tag="unloaded"):
    call_id: str
    model_id: str
    pid: int | None  # the process that was stopped, None if the model was not loaded


class Pinned(Message, tag="pinned"):
    call_id: str
    model_id: str
    pinned: bool


class ModelInfo(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    aliases: list[str]
    type: ModelType
    source: str
    state: ModelState
    context_length: int
    memory_estimate_bytes: int
    memory_bytes: int = 0  # resident, as last reported by the worker
    charged_bytes: int = 0  # what the budget counts for it now (see supervisor/memory_budget.py)
    pinned: bool = False
    priority: int = 0
    pid: int | None = None
    uptime_seconds: float | None = None
    idle_seconds: float | None = None
    in_flight: int = 0
    last_error: str | None = None
    alive: bool | None = None  # only in Status replies: did a ping reach the generation loop?
    ping_ms: float | None = None
    compute: str = ""  # what the worker chose to compute with, from its Ready
    queued: int = 0  # of in_flight: accepted by the worker, not yet generating (from its last Pong)
    worker_memory: MemoryReport | None = None  # the worker's last report: RSS and MLX's active/peak/cache
    # Since the supervisor started (Prometheus counters): workers that became ready, were evicted to make
    # room for another model, and exited without being asked to.
    loads: int = 0
    evictions: int = 0
    crashes: int = 0
    crashed: bool = False  # its worker crashed and the model has not been loaded (or unloaded) since
    transitions: dict[str, int] = {}  # lifecycle transitions since the supervisor started, e.g. "ready->stopping"


class BudgetInfo(msgspec.Struct, frozen=True, kw_only=True):
    budget_bytes: int
    used_bytes: int  # charged by models whose worker process exists
    reserved_bytes: int  # granted to loads whose process is not started yet
    host_memory_bytes: int = 0  # the host's physical memory, budget or not

    @property
    def free_bytes(self) -> int:
        return max(0, self.budget_bytes - self.used_bytes - self.reserved_bytes)


class ModelList(Message, tag="model_list"):
    call_id: str
    models: list[ModelInfo]
    memory: BudgetInfo | None = None


class StatusReport(Message, tag="status_report"):
    call_id: str
    pid: int
    protocol_version: int
    uptime_seconds: float
    memory_budget_bytes: int
    models: list[ModelInfo]
    memory: BudgetInfo | None = None


class AddAlias(Message, tag="add_alias"):
    """Name a configured model by one more alias (a wildcard pattern too), kept across restarts; an alias added
    before is pointed at the new model."""

    call_id: str
    alias: str
    model: str  # an id or alias of a configured model


class RemoveAlias(Message, tag="remove_alias"):
    """Remove an alias added at run time (those in the config file stay)."""

    call_id: str
    alias: str


class ListAliases(Message, tag="list_aliases"):
    call_id: str


class AliasEntry(msgspec.Struct, frozen=True, kw_only=True):
    alias: str
    model: str  # the id of the model it names
    runtime: bool = False  # added at run time (AddAlias), not in the config file


class AliasTable(Message, tag="alias_table"):
    """Every alias, the config's and those added at run time (the answer to each alias call)."""

    call_id: str
    aliases: list[AliasEntry]


class CallFailed(Message, tag="call_failed"):
    call_id: str
    code: ErrorCode
    message: str
    retryable: bool = False


# Every call a supervisor answers (supervisor/ctl/ holds a handler for each), and every reply.
CALLS = (EnsureLoaded, Load, Unload, Pin, ListModels, Status, AddAlias, RemoveAlias, ListAliases, *STORE_CALLS)
REPLIES = (Located, Unloaded, Pinned, ModelList, StatusReport, AliasTable, *STORE_REPLIES, CallFailed)


def call_decoder() -> msgspec.msgpack.Decoder:
    return decoder(*CALLS)


def reply_decoder() -> msgspec.msgpack.Decoder:
    return decoder(*REPLIES)

"""Calls to the supervisor from gateways and the operator CLI. Every call carries `call_id`; the reply
(a result or CallFailed) carries the same id and resolves exactly one waiting future. Every call also carries
the caller's `protocol_version`, as a worker's Hello does: a supervisor refuses a call from a peer speaking
another version with CallFailed(protocol_mismatch) instead of guessing at what it meant."""

from __future__ import annotations

from enum import StrEnum

import msgspec

from protocol.codec import Call, Message, decoder
from protocol.control import MemoryReport, ModelType
from protocol.errors import ErrorCode
from protocol.generation import SamplingDefaults
from protocol.ranks import RANK_CALLS, RANK_REPLIES
from protocol.store import STORE_CALLS, STORE_REPLIES


class ModelState(StrEnum):
    """Where a model is in its lifecycle on a host (supervisor/model_slot.py holds the allowed transitions)."""

    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"


class EnsureLoaded(Call, tag="ensure_loaded"):
    """Where does `model` (id or alias) live? Loads it first if needed; one load serves every caller."""

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


class Load(Call, tag="load"):
    model: str


class Unload(Call, tag="unload"):
    model: str


class Pin(Call, tag="pin"):
    """Pin (or unpin) a model: a pinned model is never evicted to make room for another."""

    model: str
    pinned: bool = True


class ListModels(Call, tag="list_models"):
    allowed: list[str] | None = None  # only these models (ids or aliases, as in EnsureLoaded); None: all


class Status(Call, tag="status"):
    """Supervisor status; pings every live worker (through its generation loop) before answering."""

    ping_timeout: float = 2.0


class Heartbeat(Call, tag="heartbeat"):
    """Sent by each gateway to each host about once a second: a host that stops answering is down for it."""

    gateway: str = ""  # who is asking, for the supervisor's log


class Plan(Call, tag="plan"):
    """What would serving `model` (id or alias) take on this host? Answered from the memory budget's plan,
    without acting: gateways ask every host and load where the most budget is left."""

    model: str
    allowed: list[str] | None = None  # as in EnsureLoaded


class Located(Message, tag="located"):
    call_id: str
    model_id: str
    endpoint: str
    instance_id: str
    evicted: list[str] = []  # models stopped to make room for this load (for the caller that waited on it)
    # What the request may leave unset, for this model (and the preset asked for): the preset over the model's
    # `defaults:` over the global ones. The gateway fills a request's unset fields with them.
    defaults: SamplingDefaults = SamplingDefaults()
    # The call's stale_instance crashed in a way its requests may have caused: it exited by itself with an error,
    # died of a fault (SIGSEGV, SIGABRT...) or wedged. A request that was on it is not sent again: a poison
    # request would take the new worker down too. (Killed from outside, as the OOM killer's SIGKILL: false.)
    stale_faulted: bool = False
    vocab_size: int | None = None  # the model's, from its worker's Ready: the gateway refuses top_k at or above it


class Unloaded(Message, tag="unloaded"):
    call_id: str
    model_id: str
    pid: int | None  # the process that was stopped, None if the model was not loaded


class Pinned(Message, tag="pinned"):
    call_id: str
    model_id: str
    pinned: bool


class RankInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One process of a model sharded over several (rank 0 is the worker gateways talk to)."""

    rank: int
    pid: int
    host: str = ""  # the host it runs on ("" for this one)
    memory_bytes: int = 0  # resident: rank 0's last report, the others' RSS as the supervisor reads it


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
    ranks: list[RankInfo] = []  # a sharded model's processes, rank 0 first; [] for a model in one process
    shard_mode: str = ""  # a sharded model's mode (tensor, pipeline); "" for a model in one process
    ranks_for: str = ""  # in StatusReport.guest_ranks: the host whose model these ranks are (its rank 0's)


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
    host: str = ""  # the answering host's name in a fleet ("" for a single host)
    guest_ranks: list[ModelInfo] = []  # as in StatusReport: other hosts' ranks charged here (`ctl memory` shows them)


class StatusReport(Message, tag="status_report"):
    call_id: str
    pid: int
    protocol_version: int
    uptime_seconds: float
    memory_budget_bytes: int
    models: list[ModelInfo]
    memory: BudgetInfo | None = None
    host: str = ""
    # Ranks this host runs for models sharded over hosts and served by another (rank 0's host): charged in this
    # budget, but no model of this host's to load, place or ping.
    guest_ranks: list[ModelInfo] = []


class HostAlive(Message, tag="host_alive"):
    """The answer to a Heartbeat."""

    call_id: str
    host: str  # "" for a single host
    protocol_version: int
    pid: int
    uptime_seconds: float


class LoadPlan(Message, tag="load_plan"):
    """The answer to a Plan: whether the model may run here, its state here, and the room a load would leave."""

    call_id: str
    model_id: str
    here: bool  # the config allows it on this host (its `hosts`, or none listed)
    hosts: list[str] = []  # the hosts the config allows it on; []: any
    state: ModelState = ModelState.STOPPED
    in_flight: int = 0
    exceeds: bool = False  # larger than this host's whole budget
    fits: bool = False  # fits now, after evicting the idle models in `evict`
    free_after_bytes: int = 0  # the budget left once it is loaded (after those evictions); < 0: short by that
    evict: list[str] = []


class AddAlias(Call, tag="add_alias"):
    """Name a configured model by one more alias (a wildcard pattern too), kept across restarts; an alias added
    before is pointed at the new model."""

    alias: str
    model: str  # an id or alias of a configured model


class RemoveAlias(Call, tag="remove_alias"):
    """Remove an alias added at run time (those in the config file stay)."""

    alias: str


class ListAliases(Call, tag="list_aliases"):
    """Every alias: the config's and those added at run time."""


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
CALLS = (EnsureLoaded, Load, Unload, Pin, ListModels, Status, Heartbeat, Plan, AddAlias, RemoveAlias, ListAliases,
         *STORE_CALLS, *RANK_CALLS)  # fmt: skip
REPLIES = (Located, Unloaded, Pinned, ModelList, StatusReport, HostAlive, LoadPlan, AliasTable, *STORE_REPLIES,
           *RANK_REPLIES, CallFailed)  # fmt: skip


def call_decoder() -> msgspec.msgpack.Decoder:
    return decoder(*CALLS)


def reply_decoder() -> msgspec.msgpack.Decoder:
    return decoder(*REPLIES)

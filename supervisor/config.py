"""configs/models.yaml: the models this host may serve, and the supervisor's settings.

In a fleet the file lists `hosts:` (protocol/hosts.py) and may be shared by every host: each supervisor is
told which host it is, serves only the models whose `hosts` include it (or that list none), and keeps every
model's name, so any host resolves any name alike.

Validated into typed structs at start-up, so a typo in the file stops the supervisor with the field's path
instead of surfacing at the first request.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import yaml

from protocol import ErrorCode
from protocol.control import MODEL_TYPES, bench_backend_allowed
from protocol.generation import SamplingDefaults
from protocol.hosts import HostSpec, check_hosts
from protocol.launch import SHARD_BACKENDS, SHARD_MODES, EngineSettings, LlamaCppSettings, refuse_mlx_only_settings
from supervisor.bundled import BUNDLED_PREFIX, bundled_path
from supervisor.model_names import CLAUDE_TIERS, RUNTIME_ALIASES_FILE, ModelNames, NameRefused

GB = 1024**3


class Defaults(SamplingDefaults, forbid_unknown_fields=True):
    """`defaults:` (global, and per model) and each of `presets:`, checked as a request's own fields are."""

    def __post_init__(self) -> None:
        checks = {
            "temperature": lambda v: 0 <= v <= 2,
            "top_p": lambda v: 0 < v <= 1,
            "top_k": lambda v: v >= 0,
            "min_p": lambda v: 0 <= v <= 1,
            "repetition_penalty": lambda v: v > 0,
            "max_tokens": lambda v: v >= 1,
        }
        for field, ok in checks.items():
            value = getattr(self, field)
            if value is not None and not ok(value):
                raise ValueError(f"{field} {value} is out of range")


class ShardSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`shard:` on a model: one model over several processes joined by mx.distributed (mlx-lm's own sharding)."""

    ranks: int
    mode: str = "tensor"  # tensor: every rank holds a slice of every layer; pipeline: each rank a run of layers
    backend: str = "ring"  # ring (TCP), jaccl (Thunderbolt RDMA, macOS) or mpi
    # Where the ranks run: hosts of the config's `hosts:` (a fleet), rank 0's host first, each running a contiguous
    # block of ranks (rank r on hosts[r * len(hosts) // ranks]), each host's supervisor starting and charging its
    # own; the model is served from hosts[0]. []: every rank on the model's host.
    hosts: list[str] = []
    address: str = "127.0.0.1"  # the ring's address with every rank on one host (a fleet's: each host's data address)
    env: dict[str, str] = {}  # more environment for every rank, as mlx.launch would set it (jaccl, mpi)

    def __post_init__(self) -> None:
        if self.ranks < 2:
            raise ValueError(f"shard.ranks is {self.ranks}: a sharded model has at least 2 ranks")
        if self.mode not in SHARD_MODES:
            raise ValueError(f"shard.mode {self.mode!r} is not one of {', '.join(SHARD_MODES)}")
        if self.backend not in SHARD_BACKENDS:
            raise ValueError(f"shard.backend {self.backend!r} is not one of {', '.join(SHARD_BACKENDS)}")
        if len(set(self.hosts)) != len(self.hosts):
            raise ValueError(f"shard.hosts {self.hosts}: a host is listed twice")
        if self.hosts and self.ranks % len(self.hosts):
            raise ValueError(
                f"shard.ranks is {self.ranks}, which the {len(self.hosts)} shard.hosts cannot share evenly; "
                f"choose a rank count divisible by the number of hosts"
            )

    def rank_hosts(self) -> list[str]:
        """The host of each rank, rank 0's first ([] with every rank on the model's host)."""
        return [self.hosts[r * len(self.hosts) // self.ranks] for r in range(self.ranks)] if self.hosts else []


class ModelSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: str
    # A directory in the model store (a bare name), a path (absolute, ~ or ./), or a hub repo id (org/name); for
    # type gguf a .gguf file: a path, a file in the store, or bundled:NAME (a GGUF that a package ships).
    source: str
    aliases: list[str] = []
    type: str = "llm"
    # What the model may hold: weights, KV cache and runtime. Default: estimated from the files on disk.
    memory_gb: float | None = None
    context_length: int | None = None  # default: what the model declares
    auto_load: bool = False
    pinned: bool = False  # loaded at start-up and never evicted (an operator may still unload it)
    priority: int = 0  # eviction order: lower priority is evicted first, then least recently used
    idle_ttl_seconds: float | None = None  # unload after this long without requests; None: the global TTL
    description: str = ""
    # Speculative decoding for single streams: a configured model's id or alias, or a source like `source`.
    # It must share the model's tokenizer; it is loaded into the same worker and counts in its memory.
    draft_model: str | None = None
    engine: EngineSettings = EngineSettings()  # handed to the worker as it is, in its WorkerLaunch
    defaults: Defaults = Defaults()  # sampling a request leaves unset; over the global `defaults:`
    hosts: list[str] = []  # in a fleet: the hosts it may run on (whisper on the voice host); []: any host
    shard: ShardSpec | None = None  # one model over several worker processes (see ShardSpec)
    llama_cpp: LlamaCppSettings | None = None  # type gguf only; in its WorkerLaunch (default: LlamaCppSettings())

    def __post_init__(self) -> None:
        if self.shard is not None:
            self._check_shard()
        if self.type not in MODEL_TYPES and not bench_backend_allowed(self.type):
            known = ", ".join(MODEL_TYPES)
            raise ValueError(f"model {self.id!r}: type {self.type!r} is not supported (supported: {known})")
        if self.draft_model and self.type not in ("llm", "gguf"):
            raise ValueError(f"model {self.id!r}: draft_model (speculative decoding) is for types llm and gguf only")
        if self.llama_cpp is not None and self.type != "gguf":
            raise ValueError(f"model {self.id!r}: llama_cpp settings are for type gguf only")
        if self.type == "gguf":
            try:
                refuse_mlx_only_settings(self.engine)
            except ValueError as exc:
                raise ValueError(f"model {self.id!r}: {exc}") from None
        if self.memory_gb is not None and self.memory_gb <= 0:
            raise ValueError(f"model {self.id!r}: memory_gb must be positive")

    def _check_shard(self) -> None:
        """What a sharded model cannot have: every rank replays rank 0's steps, so nothing may differ between them."""
        if self.type != "llm":
            raise ValueError(f"model {self.id!r}: shard is for type llm only")
        if self.draft_model:
            raise ValueError(f"model {self.id!r}: shard and draft_model (speculative decoding) do not go together")
        if self.engine.prompt_cache_dir:
            raise ValueError(f"model {self.id!r}: shard and engine.prompt_cache_dir do not go together")
        if self.shard.mode == "pipeline" and self.engine.prompt_cache_mb:
            # Ranks holding different numbers of layers hold different cache sizes, so their evictions would differ.
            raise ValueError(f"model {self.id!r}: shard mode pipeline needs engine.prompt_cache_mb: 0")


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    models: list[ModelSpec]
    default_model: str | None = None  # for requests that name no model; default: the first one listed
    memory_budget_gb: float = 400.0
    model_store: str = "../models"  # relative to the config file; MLX_MODEL_STORE overrides
    load_timeout_seconds: float = 600.0
    shutdown_grace_seconds: float = 10.0
    heartbeat_seconds: float = 2.0
    # A worker whose generation loop answers no ping for this long is wedged: it is killed like a crash.
    heartbeat_timeout_seconds: float = 120.0  # generous: one prefill step of a long prompt answers no ping
    idle_ttl_seconds: float = 0.0  # unload a model idle this long; 0: never (a model's own TTL wins)
    # Requests for a model that must wait for memory (busy models cannot be evicted): how many may wait
    # across all models, and for how long, before they get 503 with Retry-After.
    max_waiting_requests: int = 256
    max_wait_seconds: float = 120.0
    # More than crash_limit crashes within crash_window_seconds marks a model failed until `ctl load`.
    crash_limit: int = 3
    crash_window_seconds: float = 300.0
    # Claude model names (claude-*-haiku-*, claude-sonnet-4-5, ...) served by local models: tier -> model id or
    # alias. A Claude name that no alias or wildcard matches and whose tier has no entry here is not found.
    claude_tiers: dict[str, str] = {}
    # For a name that leads to no model (no id, alias, wildcard or tier): this model answers instead. Off by
    # default, so an unknown name stays a 404 for OpenAI clients.
    fallback_model: str | None = None
    # Sampling for requests that leave a field unset: `defaults:` here for every model, a model's own over them,
    # and named `presets:` a request selects with "preset" (over both). A request's own fields always win.
    defaults: Defaults = Defaults()
    presets: dict[str, Defaults] = {}
    # A fleet: the hosts (protocol/hosts.py) and the public keys of the gateways and operators they let in.
    hosts: list[HostSpec] = []
    host_clients: list[str] = []
    # Read by the gateway (gateway/config/file.py), which validates them; the supervisor only lets them through.
    services: list[dict] = []
    gateway: dict = {}

    def __post_init__(self) -> None:
        if self.memory_budget_gb <= 0:
            raise ValueError("memory_budget_gb must be positive")
        unknown = set(self.claude_tiers) - set(CLAUDE_TIERS)
        if unknown:
            raise ValueError(f"claude_tiers: unknown tier(s) {sorted(unknown)} (tiers: {', '.join(CLAUDE_TIERS)})")


class Config:
    """Settings plus what they imply: the store location, and the names (model_names.py) that lead to each model."""

    def __init__(self, settings: Settings, base_dir: Path, host: str | None = None):
        self.settings = settings
        # The environment's store is relative to the working directory, the file's to the file.
        env_store = os.environ.get("MLX_MODEL_STORE")
        store = Path(env_store).expanduser() if env_store else base_dir / Path(settings.model_store).expanduser()
        self.store = store.resolve()
        self.base_dir = base_dir
        if not settings.models:
            raise ValueError("the config lists no models")
        self.models: dict[str, ModelSpec] = {spec.id: spec for spec in settings.models}
        if len(self.models) != len(settings.models):
            raise ValueError("a model id is used twice in the config")
        self.names = ModelNames(
            {spec.id: spec.aliases for spec in settings.models},
            settings.claude_tiers,
            self.store / RUNTIME_ALIASES_FILE,
        )
        for spec in settings.models:
            if spec.memory_gb is None and is_hub_id(spec.source):
                raise ValueError(f"model {spec.id!r}: set memory_gb (hub weights are not on disk to measure)")
        for spec in settings.models:  # once every name is known: a draft may name a model listed after it
            if spec.memory_gb is None and spec.draft_model and is_hub_id(self.draft_source_of(spec)):
                raise ValueError(f"model {spec.id!r}: set memory_gb (its draft's weights are not on disk to measure)")
        for spec in settings.models:
            if spec.shard is not None:
                from supervisor.sharding import check_shardable  # it imports mlx-lm's model module, only for these

                check_shardable(spec, self.source_of(spec))
        self.default_model = self._configured("default_model", settings.default_model or settings.models[0].id)
        self.fallback_model = settings.fallback_model and self._configured("fallback_model", settings.fallback_model)
        check_hosts(settings.hosts)
        self.hosts = {h.name: h for h in settings.hosts}
        for spec in settings.models:
            unknown = [h for h in spec.hosts if h not in self.hosts]
            if unknown:
                listed = ", ".join(self.hosts) or "none"
                raise ValueError(f"model {spec.id!r}: hosts {unknown} are not in the config's hosts ({listed})")
        for spec in settings.models:
            if spec.shard is not None and spec.shard.hosts:
                self._check_shard_hosts(spec)
        if host is not None and host not in self.hosts:
            raise ValueError(f"host {host!r} is not in the config's hosts ({', '.join(self.hosts) or 'none'})")
        self.host = self.hosts[host] if host is not None else None  # the host this supervisor is, in a fleet
        budget = self.host.memory_budget_gb if self.host and self.host.memory_budget_gb else None
        self.memory_budget_gb = budget or settings.memory_budget_gb

    def _check_shard_hosts(self, spec: ModelSpec) -> None:
        shard = spec.shard
        if not self.hosts:
            raise ValueError(f"model {spec.id!r}: shard.hosts names hosts, but the config lists no hosts (a fleet)")
        unknown = [h for h in shard.hosts if h not in self.hosts]
        if unknown:
            raise ValueError(f"model {spec.id!r}: shard.hosts {unknown} are not in the config's hosts "
                             f"({', '.join(self.hosts)})")  # fmt: skip
        if spec.hosts and spec.hosts != shard.hosts[:1]:
            raise ValueError(
                f"model {spec.id!r}: a model sharded over hosts is served from rank 0's host, shard.hosts[0] "
                f"({shard.hosts[0]}); its hosts {spec.hosts} say otherwise (leave hosts out)"
            )

    def served_on(self, spec: ModelSpec) -> list[str]:
        """The hosts that may serve `spec` ([]: any): a model sharded over hosts, rank 0's host only."""
        return spec.shard.hosts[:1] if spec.shard is not None and spec.shard.hosts else list(spec.hosts)

    def runs_here(self, spec: ModelSpec) -> bool:
        """Whether this supervisor serves `spec`: any model on a single host, else those allowed on its host."""
        served_on = self.served_on(spec)
        return self.host is None or not served_on or self.host.name in served_on

    def _configured(self, setting: str, name: str) -> str:
        model_id = self.names.configured(name)
        if model_id is None:
            raise ValueError(f"{setting} {name!r} is not a configured model")
        return model_id

    def resolve(self, name: str, fallback: bool = False) -> ModelSpec | None:
        """The model `name` leads to (model_names.py), the empty name the default; with `fallback`, the
        fallback model (if configured) for a name that leads nowhere."""
        model_id = self.names.resolve(name or self.default_model)
        if model_id is None and fallback:
            model_id = self.fallback_model
        return None if model_id is None else self.models[model_id]

    def why_unknown(self, name: str, allowed: list[str] | None = None) -> str:
        """Why `name` resolves to no model, for the error a client reads (naming only models it may use)."""
        return self.names.why_unknown(name, [i for i, spec in self.models.items() if self.allows(spec, allowed)])

    def allows(self, spec: ModelSpec, allowed: list[str] | None) -> bool:
        """Whether `spec` is among `allowed` (ids or aliases, resolved like request names; None: any model)."""
        if allowed is None:
            return True
        return any((other := self.resolve(name)) is not None and other.id == spec.id for name in allowed if name)

    def defaults_for(self, model_id: str, preset: str | None = None) -> SamplingDefaults:
        """What a request for `model_id` may leave unset: the preset over the model's defaults over the global ones."""
        layered = self.models[model_id].defaults.over(self.settings.defaults)
        return self.preset(preset).over(layered) if preset else layered

    def preset(self, name: str) -> SamplingDefaults:
        if name not in self.settings.presets:
            known = ", ".join(sorted(self.settings.presets)) or "none are configured"
            raise NameRefused(ErrorCode.INVALID_REQUEST, f"unknown preset '{name}' (presets: {known})")
        return self.settings.presets[name]

    def source_of(self, spec: ModelSpec) -> str:
        """What the worker loads: an absolute directory, or a hub repo id left for mlx-lm to fetch."""
        return self._locate(spec.source)

    def draft_source_of(self, spec: ModelSpec) -> str | None:
        if spec.draft_model is None:
            return None
        named = self.resolve(spec.draft_model)
        return self.source_of(named) if named is not None else self._locate(spec.draft_model)

    def _locate(self, source: str) -> str:
        if source.startswith(BUNDLED_PREFIX):
            return str(bundled_path(source.removeprefix(BUNDLED_PREFIX)))
        if is_hub_id(source):
            return source
        if source.startswith(("/", "~", "./", "../")):
            path = Path(source).expanduser()
            return str(path if path.is_absolute() else (self.base_dir / path).resolve())
        return str(self.store / source)


def is_hub_id(source: str) -> bool:
    """org/name; paths start with /, ~, ./ or ../ and bare names are directories in the model store."""
    return "/" in source and not source.startswith(("/", "~", "./", "../"))


def load_config(path: str | os.PathLike, host: str | None = None) -> Config:
    """The config at `path`, for the supervisor of `host` when it is one of a fleet's."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
        settings = msgspec.convert(raw, Settings)
    except (OSError, yaml.YAMLError, msgspec.ValidationError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return Config(settings, path.parent.resolve(), host)

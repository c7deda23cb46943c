"""The launch contract: everything a worker is started with, as one typed value, and where its sockets are.

The supervisor builds a `WorkerLaunch` and starts the worker with `worker_argv(launch)`: `python -m worker
--launch '<json>'`. One JSON argument rather than an environment variable or the stdin pipe: it shows in `ps`
(an operator sees what a worker was started with, and the orphan sweep recognises a worker of its run
directory by it), its children do not inherit it, and stdin stays the lifeline. argv is readable by every
user of the host, so a launch never carries a secret: name a 0600 file holding it instead (a CURVE key, say).
The worker decodes it with the typed decoder, so a launch with a wrong field stops it at once with the
field's path. `python -m worker --model-id X --source Y` (standalone) builds the same struct from flags whose
defaults are the struct's.

New fields get defaults, as on the wire. Endpoints are computed here only: `ipc://` paths in the run directory
on a single host; on a host that serves other machines (a fleet's host, over TCP and CURVE) a worker binds its
data plane on the host's TCP address with a port of the system's choosing, says in its Hello where it bound,
and the supervisor hands gateways that address (`advertised`).
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Annotated

import msgspec

from protocol.codec import PROTOCOL_VERSION
from protocol.control import ModelType

MB = 1024**2
KV_BITS = (4, 8)  # quantized KV cache widths (worker/quantized_cache.py)
KV_GROUP_SIZES = (32, 64, 128)

# Environment variables read by more than one kind of process.
RUN_DIR_ENV = "MLX_SERVER_RUN_DIR"  # sockets, pid files and the worker registry; default ./run
SUPERVISOR_ENDPOINT_ENV = "SUPERVISOR_ENDPOINT"  # the supervisor's ctl endpoint, instead of the run directory's
LOG_LEVEL_ENV = "LOG_LEVEL"
DEFAULT_RUN_DIR = "run"

CTL_SOCKET = "supervisor.sock"  # gateways and `supervisor ctl` call the supervisor here
WORKERS_SOCKET = "supervisor-workers.sock"  # workers say Hello, Ready and Pong here


def run_dir_from_env() -> Path:
    return Path(os.environ.get(RUN_DIR_ENV, DEFAULT_RUN_DIR)).resolve()


def ctl_endpoint(run_dir: Path | str) -> str:
    """The supervisor's ctl endpoint: SUPERVISOR_ENDPOINT if set, else its socket in the run directory."""
    return os.environ.get(SUPERVISOR_ENDPOINT_ENV) or f"ipc://{run_dir}/{CTL_SOCKET}"


def workers_endpoint(run_dir: Path | str) -> str:
    return f"ipc://{run_dir}/{WORKERS_SOCKET}"


def worker_endpoint(run_dir: Path | str, model_id: str, tcp_host: str | None = None) -> str:
    """Where the worker serving `model_id` binds its data plane (gateways connect to it): its socket in the run
    directory, or, on a host serving over TCP, any free port on `tcp_host` (the worker reports the one it got)."""
    return f"tcp://{tcp_host}:*" if tcp_host else f"ipc://{run_dir}/worker-{model_id}.sock"


def tcp_host_of(endpoint: str) -> str:
    """The address part of a tcp:// endpoint: tcp://10.0.0.5:7100 -> 10.0.0.5."""
    return endpoint.removeprefix("tcp://").rsplit(":", 1)[0]


def advertised(bound: str, public: str) -> str:
    """What gateways connect to for a worker bound at `bound`: a wildcard address (0.0.0.0, *, ::) is replaced
    by the address of the host's public ctl endpoint `public`, since clients reach the host there."""
    if not bound.startswith("tcp://") or tcp_host_of(bound) not in ("0.0.0.0", "*", "[::]", "::"):
        return bound
    return f"tcp://{tcp_host_of(public)}:{bound.rsplit(':', 1)[1]}"


def new_instance_id() -> str:
    """Unique per spawned process, so messages from an earlier instance of the same model are told apart."""
    return uuid.uuid4().hex[:12]


def _about(text: str):
    return msgspec.Meta(description=text)


class EngineSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a model's worker batches (worker/batch_engine.py): a model's `engine:` in the config, the worker's
    engine flags, and what the engine runs with. The descriptions are the worker's flag help."""

    decode_concurrency: Annotated[int, _about("sequences decoding together; more wait their turn")] = 16
    prefill_concurrency: Annotated[int, _about("prompts processed together")] = 4
    prefill_step_size: Annotated[int, _about("prompt tokens per step: a long prompt is processed in chunks")] = 512
    prompt_cache_mb: Annotated[int, _about("prompt prefix cache + live KV caches; 0 turns it off")] = 512
    num_draft_tokens: Annotated[int, _about("with a draft model: tokens proposed per verification round")] = 3
    max_waiting: Annotated[int, _about("requests waiting for a slot; past it one is refused (overloaded)")] = 256
    prompt_cache_dir: Annotated[str, _about("a folder where prompt cache entries outlive the worker; unset: off")] = ""
    prompt_cache_disk_mb: Annotated[int, _about("that folder's byte budget; the least recently used go first")] = 4096
    kv_bits: Annotated[int | None, _about("quantize the KV cache (live batch and prompt cache) to 8 or 4 bits")] = None
    kv_group_size: Annotated[int, _about("with kv_bits: values sharing one scale and bias (32, 64 or 128)")] = 64

    def __post_init__(self) -> None:
        if self.num_draft_tokens < 1:
            raise ValueError("num_draft_tokens must be at least 1")
        if self.max_waiting < 1:
            raise ValueError("max_waiting must be at least 1")
        if self.prompt_cache_disk_mb < 0:
            raise ValueError("prompt_cache_disk_mb must not be negative")
        if self.kv_bits not in (None, *KV_BITS):
            raise ValueError(f"kv_bits must be one of {', '.join(map(str, KV_BITS))} (or unset: 16-bit)")
        if self.kv_group_size not in KV_GROUP_SIZES:
            raise ValueError(f"kv_group_size must be one of {', '.join(map(str, KV_GROUP_SIZES))}")

    @property
    def prompt_cache_bytes(self) -> int:
        return self.prompt_cache_mb * MB

    @property
    def prompt_cache_disk_bytes(self) -> int:
        return self.prompt_cache_disk_mb * MB


class CurveServer(msgspec.Struct, frozen=True, kw_only=True):
    """A worker on a host that serves other machines: its data plane is a CURVE server with the host's keys, and
    only the listed clients get in (protocol/curve.py)."""

    key_file: str  # the host's key pair file (0600): the secret key itself never goes on a command line
    allowed_clients: list[str] = []  # Z85 public keys of the gateways allowed to connect


SHARD_MODES = ("tensor", "pipeline")  # mlx-lm's model.shard(group) and model.model.pipeline(group)
SHARD_BACKENDS = ("ring", "jaccl", "mpi")  # mx.distributed backends: ring over TCP, JACCL over Thunderbolt RDMA


class ShardLaunch(msgspec.Struct, frozen=True, kw_only=True):
    """One rank of a model sharded over several processes with mx.distributed: the environment mlx.launch would
    give it. Rank 0 is the worker gateways talk to; the other ranks follow its steps (worker/lockstep.py)."""

    rank: int
    ranks: int  # the world size
    mode: str = "tensor"  # one of SHARD_MODES
    backend: str = "ring"  # one of SHARD_BACKENDS
    # ring: every rank's host:port, in rank order, as MLX_HOSTFILE holds it ([["127.0.0.1:5000"], ...]).
    ring_hosts: list[list[str]] = []
    # More of mlx.launch's environment, passed through as it is (jaccl: MLX_JACCL_COORDINATOR, MLX_IBV_DEVICES, ...).
    env: dict[str, str] = {}


class LlamaCppSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How llama-server runs a model of type gguf (worker/llama_server.py): a model's `llama_cpp:` in the config,
    the worker's llama.cpp flags. Its prompt cache and draft tokens are the EngineSettings' prompt_cache_mb and
    num_draft_tokens; max_waiting bounds the requests waiting for a slot, as for every engine."""

    parallel: Annotated[int, _about("llama-server slots: sequences decoded together, each with the whole context")] = 4
    threads: Annotated[int | None, _about("CPU threads; unset: llama.cpp's choice")] = None
    n_gpu_layers: Annotated[int | None, _about("layers on the GPU; unset: all, where a GPU backend is built in")] = None
    stream_interval_ms: Annotated[
        int, _about("a flowing stream's tokens go out at most this often, a few at a time; 0: each as it comes")
    ] = 50

    def __post_init__(self) -> None:
        if self.parallel < 1 or (self.threads is not None and self.threads < 1):
            raise ValueError("llama_cpp: parallel and threads must be at least 1")
        if self.n_gpu_layers is not None and self.n_gpu_layers < 0:
            raise ValueError("llama_cpp: n_gpu_layers must be 0 or more")
        if not 0 <= self.stream_interval_ms <= 1000:
            raise ValueError("llama_cpp: stream_interval_ms must be between 0 and 1000")


LLAMA_CPP_ENGINE_SETTINGS = ("prompt_cache_mb", "num_draft_tokens", "max_waiting")  # what a gguf model's engine takes


def refuse_mlx_only_settings(engine: EngineSettings) -> None:
    """A gguf model's llama-server has no use for the MLX engine's batching, KV quantization or disk prompt cache:
    those settings, set away from their defaults, are refused rather than silently ignored."""
    default = EngineSettings()
    unused = [
        f"engine.{name}"
        for name in EngineSettings.__struct_fields__
        if name not in LLAMA_CPP_ENGINE_SETTINGS and getattr(engine, name) != getattr(default, name)
    ]
    if unused:
        raise ValueError(
            f"{', '.join(unused)}: MLX engine settings that a gguf model (llama.cpp) does not take; it takes "
            f"engine.{', engine.'.join(LLAMA_CPP_ENGINE_SETTINGS)} and llama_cpp "
            f"({', '.join(LlamaCppSettings.__struct_fields__)})"
        )


class WorkerLaunch(msgspec.Struct, frozen=True, kw_only=True):
    """What one worker process serves, where, and how it ends. Built by the supervisor for each spawn."""

    protocol_version: int = PROTOCOL_VERSION  # of the supervisor that built it; the worker refuses another
    model_id: str  # the id clients use for this model
    instance_id: str  # see new_instance_id
    source: str  # a model directory, or a hub repo id (type gguf: a .gguf file)
    model_type: ModelType = ModelType.LLM  # picks the backend
    context_length: int | None = None  # None: what the model declares
    draft_source: str | None = None  # a draft model for speculative decoding (llm and gguf), loaded alongside
    engine: EngineSettings = EngineSettings()
    llama_cpp: LlamaCppSettings = LlamaCppSettings()  # type gguf only
    data_endpoint: str  # bound by the worker: requests from gateways
    curve: CurveServer | None = None  # None: no CURVE (an ipc:// endpoint, or a standalone worker)
    supervisor_endpoint: str | None = None  # the supervisor's workers socket; None: standalone, no supervisor
    shutdown_grace: float = 10.0  # seconds to drain in-flight requests after SIGTERM
    # Exit when stdin reaches EOF: the supervisor holds the other end of that pipe, so the worker goes when its
    # supervisor goes, however it died.
    exit_with_stdin: bool = False
    # What the supervisor's memory budget charges this model (its estimate); the worker bounds MLX's memory and
    # buffer cache by it (worker/memory.py). None: standalone, MLX's defaults.
    memory_charge_bytes: int | None = None
    shard: ShardLaunch | None = None  # one rank of a sharded model; None: the whole model in this process


_launch_decoder = msgspec.json.Decoder(WorkerLaunch)
LAUNCH_FLAG = "--launch"


def encode_launch(launch: WorkerLaunch) -> str:
    return msgspec.json.encode(launch).decode()


def decode_launch(text: str) -> WorkerLaunch:
    """The launch a worker was given; ValueError (a msgspec error, or a version mismatch) if it cannot be used."""
    launch = _launch_decoder.decode(text)
    if launch.protocol_version != PROTOCOL_VERSION:
        raise ValueError(
            f"the launch speaks protocol version {launch.protocol_version}, this worker speaks {PROTOCOL_VERSION}"
        )
    return launch


def worker_argv(launch: WorkerLaunch, python: str = sys.executable) -> list[str]:
    """The command line that starts a worker for `launch`."""
    return [python, "-m", "worker", LAUNCH_FLAG, encode_launch(launch)]

"""A model sharded over several worker processes (`shard:` in the config): what the supervisor checks before it
starts one, and the launch of each rank.

The ranks join with mx.distributed from the environment mlx.launch would give them (worker/lockstep.py); the
supervisor only chooses each rank's ring address and starts the processes (with `shard.hosts`, each host's
supervisor its own block of ranks: supervisor/remote_ranks.py and guest_ranks.py). mlx-lm's `model.shard(group)`
divides every layer's heads and MLP rows by the rank count without checking, so a model whose counts do not
divide would load and answer garbage: refused here, with the counts, before anything is spawned.
"""

from __future__ import annotations

import importlib
import json
import socket
from pathlib import Path

import msgspec

from protocol.launch import ShardLaunch, WorkerLaunch
from supervisor.config import ModelSpec, ShardSpec

# The config.json counts mlx-lm's Llama-family `shard` divides by the rank count.
TENSOR_DIVIDED = ("num_attention_heads", "num_key_value_heads", "intermediate_size")


def check_shardable(spec: ModelSpec, source: str) -> None:
    """ValueError saying why `spec.shard` cannot work on the model in `source` (a directory; a model not on disk
    yet is checked by its worker at load)."""
    config_path = Path(source) / "config.json"
    if not config_path.is_file():
        return
    config = json.loads(config_path.read_text())
    config = config.get("text_config", config)
    shard = spec.shard
    modes = sharding_modes(config.get("model_type", ""))
    if shard.mode not in modes:
        offered = f"it offers {', '.join(modes)}" if modes else "it offers none"
        raise ValueError(
            f"model {spec.id!r}: mlx-lm has no {shard.mode} sharding for {config.get('model_type')!r} ({offered})"
        )
    if shard.mode == "tensor":
        for key in TENSOR_DIVIDED:
            count = config.get(key) or (config.get("num_attention_heads") if key == "num_key_value_heads" else None)
            if isinstance(count, int) and count % shard.ranks:
                raise ValueError(
                    f"model {spec.id!r}: {key} is {count}, which {shard.ranks} ranks cannot divide evenly; "
                    f"choose a rank count that divides it"
                )
    elif isinstance(layers := config.get("num_hidden_layers"), int) and layers < shard.ranks:
        raise ValueError(f"model {spec.id!r}: {layers} layers cannot be spread over {shard.ranks} ranks")


def sharding_modes(model_type: str) -> list[str]:
    """The modes mlx-lm implements for an architecture: tensor where its Model has `shard`, pipeline where its
    inner model mixes in PipelineMixin (imports mlx-lm's module for it, as mlx-lm's sharded_load checks)."""
    try:
        from mlx_lm.models.pipeline import PipelineMixin
        from mlx_lm.utils import MODEL_REMAPPING  # mistral is llama to mlx-lm, and so on

        module = importlib.import_module(f"mlx_lm.models.{MODEL_REMAPPING.get(model_type, model_type)}")
    except ImportError:
        return []
    modes = ["tensor"] if hasattr(getattr(module, "Model", None), "shard") else []
    if any(isinstance(v, type) and issubclass(v, PipelineMixin) for v in vars(module).values()):
        modes.append("pipeline")
    return modes


def ring_hosts(address: str, ranks: int) -> list[list[str]]:
    """A free port on `address` for each rank, as MLX_HOSTFILE lists them (mlx.launch picks consecutive ports from
    a starting port; free ones avoid clashing with another sharded model or a second supervisor)."""
    sockets = []
    try:
        for _ in range(ranks):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((address, 0))
            sockets.append(s)
        return [[f"{address}:{s.getsockname()[1]}"] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def ranks_on(shard: ShardSpec, host: str) -> list[int]:
    """The ranks `host` runs: every rank with no shard.hosts, else its contiguous block (ShardSpec.rank_hosts)."""
    if not shard.hosts:
        return list(range(shard.ranks))
    return [rank for rank, name in enumerate(shard.rank_hosts()) if name == host]


def host_share(spec: ModelSpec, host: str) -> float:
    """The part of `spec`'s memory that `host` charges: its ranks over all (1 for a model on one host)."""
    if spec.shard is None or not spec.shard.hosts:
        return 1.0
    return len(ranks_on(spec.shard, host)) / spec.shard.ranks


def rank_launches(
    leader: WorkerLaunch, shard: ShardSpec, ring: list[list[str]], ranks: list[int]
) -> list[WorkerLaunch]:
    """The launches of this host's `ranks`, joined to `ring` (every rank's host:port): from `leader`, whose
    memory_charge_bytes is what this host charges for them all. Rank 0 (where it is here, first) is the worker
    gateways talk to; the others load the same model and follow it, so they need no data plane and no supervisor
    socket."""
    per_rank = leader.memory_charge_bytes and leader.memory_charge_bytes // len(ranks)
    launches = []
    for rank in ranks:
        joined = ShardLaunch(
            rank=rank, ranks=shard.ranks, mode=shard.mode, backend=shard.backend, ring_hosts=ring, env=shard.env
        )
        launches.append(msgspec.structs.replace(leader, shard=joined, memory_charge_bytes=per_rank))
    return launches

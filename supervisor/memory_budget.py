"""The memory budget of this host, and its one owner: `MemoryBudget` estimates what a model will hold, keeps
every charge, grants room, releases it, plans which idle models to evict, and reports. It decides; the fleet
acts on its decisions (spawns, evicts, waits). It never starts or stops a process.

A model is charged its estimate from the moment room is granted for it, so two loads decided one after the
other cannot both count on the same free memory; once its process exists, the larger of its estimate and what
the process last reported, so the KV allowance promised at load time stays its own and growth past the
estimate is seen as it happens; while stopping, until its process is gone. A model is spawned only once the
models evicted for it have exited, so the processes that exist never hold more than the budget by a decision
of the supervisor.

A charge belongs to one model's processes on this host: each configured model's slot owns one; a model sharded
over several hosts owns one on each, for that host's ranks (supervisor/guest_ranks.py on the hosts other than
rank 0's).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import psutil

from protocol.control import MemoryReport
from protocol.ctl import BudgetInfo
from protocol.launch import LlamaCppSettings
from supervisor.config import GB, ModelSpec
from supervisor.sharding import host_share

if TYPE_CHECKING:
    from supervisor.model_slot import ModelSlot

# A worker before any weights: Python, MLX, the tokenizer (a worker holding 98 MB of weights measured 240 MB RSS).
RUNTIME_BYTES = GB // 4
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".npz")
KV_BYTES_PER_VALUE = 2  # float16/bfloat16 keys and values


def estimate_bytes(spec: ModelSpec, source: str, draft_source: str | None = None) -> int:
    """The config's memory_gb, else weights on disk + a full-context KV cache for one sequence + the worker's
    prompt cache budget + runtime, and the same weights and KV cache for a draft model; the model's KV cache at
    its engine.kv_bits. Encoders (type embedding) and speech models (stt, tts) keep no KV or prompt cache, and the
    vision backend no prompt cache. A sharded model: all its ranks (each rank's share: this over the rank count)."""
    if spec.memory_gb is not None:
        return int(spec.memory_gb * GB)
    if spec.type == "gguf":
        return gguf_estimate_bytes(spec, source, draft_source)
    if not Path(source).is_dir():  # hub models must state memory_gb (the config checks), so this is a directory
        return RUNTIME_BYTES  # nothing to load: the worker will fail with the loader's own message
    # A sharded model's ranks divide its weights and KV cache; each is a worker with its own runtime and cache.
    processes = spec.shard.ranks if spec.shard else 1
    total = processes * (RUNTIME_BYTES + (spec.engine.prompt_cache_bytes if spec.type == "llm" else 0))
    # kv_bits quantizes the llm engine's model cache; a draft's cache and the vision backend's stay 16-bit.
    quantized = kv_value_bytes(spec) if spec.type == "llm" else KV_BYTES_PER_VALUE
    for path, value_bytes in (
        (Path(source), quantized),
        *([(Path(draft_source), KV_BYTES_PER_VALUE)] if draft_source else []),
    ):
        if path.is_dir():
            total += sum(f.stat().st_size for f in path.iterdir() if f.name.endswith(WEIGHT_SUFFIXES))
            if spec.type in ("llm", "vlm"):  # encoders and speech models keep no KV cache between requests
                total += kv_cache_bytes(path / "config.json", spec.context_length, value_bytes)
    return total


def kv_value_bytes(spec: ModelSpec) -> float:
    """Bytes per cached key or value element: 16-bit, or engine.kv_bits plus a 16-bit scale and bias per group."""
    bits, group = spec.engine.kv_bits, spec.engine.kv_group_size
    return KV_BYTES_PER_VALUE if bits is None else bits / 8 + 2 * KV_BYTES_PER_VALUE / group


def kv_cache_bytes(config_path: Path, context_length: int | None, value_bytes: float = KV_BYTES_PER_VALUE) -> int:
    """Keys and values for every layer over the whole context, from the model's config.json (0 if unknown)."""
    try:
        config = json.loads(config_path.read_text())
        config = config.get("text_config", config)
        layers = config["num_hidden_layers"]
        heads = config["num_attention_heads"]
        kv_heads = config.get("num_key_value_heads") or heads
        head_dim = config.get("head_dim") or config["hidden_size"] // heads
        context = context_length or config.get("max_position_embeddings") or 4096
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return 0
    return int(2 * layers * kv_heads * head_dim * context * value_bytes)


def gguf_estimate_bytes(spec: ModelSpec, source: str, draft_source: str | None) -> int:
    """llama-server: the GGUF files, a KV cache of `parallel` slots x the whole context for the model (and its
    draft), allocated when it starts, its host-memory prompt cache (--cache-ram) and the worker's runtime."""
    parallel = (spec.llama_cpp or LlamaCppSettings()).parallel
    total = RUNTIME_BYTES + spec.engine.prompt_cache_bytes
    for path in (Path(source), *([Path(draft_source)] if draft_source else [])):
        if path.is_file():
            total += path.stat().st_size + parallel * gguf_kv_bytes(path, spec.context_length)
    return total


def gguf_kv_bytes(path: Path, context_length: int | None) -> int:
    """Keys and values (float16) for every layer over one slot's context, from the GGUF's metadata (0 if unknown)."""
    from gguf import GGUFReader

    try:
        fields = GGUFReader(path).fields
        arch = fields["general.architecture"].contents()

        def value(key: str, default=None):
            field = fields.get(f"{arch}.{key}")
            return field.contents() if field is not None else default

        heads = value("attention.head_count")
        kv_heads = value("attention.head_count_kv", heads)
        head_dim = value("attention.key_length") or value("embedding_length") // heads
        context = context_length or value("context_length", 4096)
        return 2 * value("block_count") * kv_heads * head_dim * context * KV_BYTES_PER_VALUE
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return 0


class Reporting(Protocol):
    """A process that reports its memory (a WorkerProcess): its latest report, None before the first."""

    memory: MemoryReport | None


class Charge:
    """What one process counts against the budget. Its owner holds it; only the MemoryBudget changes it."""

    def __init__(self, key: str):
        self.key = key  # unique in its budget: a model id (later, a model id and a rank)
        self.estimate = 0  # bytes, set by MemoryBudget.estimate before each load (the files may change)
        self.granted = False  # room was made for it: it counts from now until it is released
        self.process: Reporting | None = None  # once spawned: what it reports counts when larger

    @property
    def bytes(self) -> int:
        """What it counts against the budget now."""
        if not self.granted:
            return 0
        reported = self.process.memory.resident_bytes if self.process and self.process.memory else 0
        return max(self.estimate, reported)

    @property
    def reserved(self) -> bool:
        """Granted to a load whose process is not started yet."""
        return self.granted and self.process is None


class MemoryBudget:
    """The budget and every charge against it. One per host (supervisor)."""

    def __init__(self, budget_bytes: int, host: str = ""):
        self.total = budget_bytes
        self.host = host  # its name in a fleet: a model sharded over hosts charges each its ranks' share
        self._charges: dict[str, Charge] = {}

    def open(self, key: str) -> Charge:
        """A new charge (of nothing yet) for the owner that `key` names."""
        if key in self._charges:
            raise ValueError(f"a charge for {key!r} already exists")
        self._charges[key] = charge = Charge(key)
        return charge

    def estimate(self, charge: Charge, spec: ModelSpec, source: str, draft_source: str | None = None) -> int:
        """Set and return what `charge` will be granted at its next load (see estimate_bytes): for a model sharded
        over hosts, this host's ranks' share."""
        charge.estimate = int(estimate_bytes(spec, source, draft_source) * host_share(spec, self.host))
        return charge.estimate

    def exceeds(self, charge: Charge) -> bool:
        """Larger than the whole budget: no eviction can make room for it."""
        return charge.estimate > self.total

    def plan(self, charge: Charge, slots: Iterable[ModelSlot]) -> list[ModelSlot] | None:
        """The models to evict so that `charge`'s estimate fits: [] if it fits already, None if no eviction of
        these `slots` can do it (the caller waits while busy models hold the memory).

        Only idle, unpinned, loaded models are candidates, lowest priority first, then least recently used; a model
        with requests in flight is never chosen.
        """
        free = self.total - self.committed()
        if charge.estimate <= free:
            return []
        victims = []
        for slot in sorted((s for s in slots if s.evictable), key=lambda s: (s.priority, s.last_used)):
            victims.append(slot)
            free += slot.charge.bytes
            if charge.estimate <= free:
                return victims
        return None

    def preview(self, charge: Charge, slots: Iterable[ModelSlot]) -> tuple[list[ModelSlot] | None, int]:
        """`plan` for `charge`, and the budget that load would leave: after its evictions when it fits, else
        (negative) how far it falls short even with every idle model evicted. Changes nothing: other hosts'
        plans are weighed against it (a gateway loads where the most is left)."""
        slots = list(slots)
        victims = self.plan(charge, slots)
        freed = victims if victims is not None else [s for s in slots if s.evictable]
        return victims, self.total - self.committed() + sum(v.charge.bytes for v in freed) - charge.estimate

    def grant(self, charge: Charge) -> None:
        """Room is made (by the plan the caller has just carried out): the estimate counts from now."""
        charge.granted = True

    def attach(self, charge: Charge, process: Reporting) -> None:
        """Its process is spawned: from now on its reports count when they exceed the estimate."""
        charge.process = process

    def release(self, charge: Charge) -> None:
        """Its process is gone, or was never started: it counts nothing any more."""
        charge.granted, charge.process = False, None

    def close(self, charge: Charge) -> bool:
        """Its owner is gone for good (a load of another host's ranks): released and forgotten. False if it was
        closed already."""
        self.release(charge)
        return self._charges.pop(charge.key, None) is not None

    def committed(self) -> int:
        return sum(c.bytes for c in self._charges.values())

    def report(self) -> BudgetInfo:
        reserved = sum(c.bytes for c in self._charges.values() if c.reserved)
        return BudgetInfo(
            budget_bytes=self.total,
            used_bytes=self.committed() - reserved,
            reserved_bytes=reserved,
            host_memory_bytes=psutil.virtual_memory().total,
        )

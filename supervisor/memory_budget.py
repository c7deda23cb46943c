"""The memory budget: what a model will hold before it loads, and which idle models make room for it.

A model is charged (see ModelSlot.charge) its estimate from the moment room is granted for it, so two loads
decided one after the other cannot both count on the same free memory; once loaded, the larger of its estimate
and what its worker last reported, so the KV allowance promised at load time stays its own and growth past the
estimate is seen as it happens; while stopping, until its process is gone. A model is spawned only once the
models evicted for it have exited, so the processes that exist never hold more than the budget by a decision
of the supervisor.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from supervisor.config import GB, ModelSpec

if TYPE_CHECKING:
    from supervisor.model_slot import ModelSlot

# A worker before any weights: Python, MLX, the tokenizer (a worker holding 98 MB of weights measured 240 MB RSS).
RUNTIME_BYTES = GB // 4
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".npz")
KV_BYTES_PER_VALUE = 2  # float16/bfloat16 keys and values


def estimate_bytes(spec: ModelSpec, source: str, draft_source: str | None = None) -> int:
    """The config's memory_gb, else weights on disk + a full-context KV cache for one sequence + the worker's
    prompt cache budget + runtime, and the same weights and KV cache for a draft model. Encoders (type embedding)
    keep no KV or prompt cache, and the vision backend no prompt cache."""
    if spec.memory_gb is not None:
        return int(spec.memory_gb * GB)
    if not Path(source).is_dir():  # hub models must state memory_gb (the config checks), so this is a directory
        return RUNTIME_BYTES  # nothing to load: the worker will fail with the loader's own message
    total = RUNTIME_BYTES + (spec.engine.prompt_cache_bytes if spec.type == "llm" else 0)
    for path in (Path(source), *([Path(draft_source)] if draft_source else [])):
        if path.is_dir():
            total += sum(f.stat().st_size for f in path.iterdir() if f.name.endswith(WEIGHT_SUFFIXES))
            if spec.type != "embedding":
                total += kv_cache_bytes(path / "config.json", spec.context_length)
    return total


def kv_cache_bytes(config_path: Path, context_length: int | None) -> int:
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
    return 2 * layers * kv_heads * head_dim * context * KV_BYTES_PER_VALUE


def committed_bytes(slots: Iterable[ModelSlot]) -> int:
    return sum(slot.charge for slot in slots)


def plan_room(need: int, budget: int, slots: list[ModelSlot]) -> list[ModelSlot] | None:
    """The models to evict so that `need` more bytes fit: [] if they fit already, None if no eviction can do it.

    Only idle, unpinned, loaded models are candidates, lowest priority first, then least recently used; a model
    with requests in flight is never chosen (the caller waits instead).
    """
    free = budget - committed_bytes(slots)
    if need <= free:
        return []
    victims = []
    candidates = sorted((s for s in slots if s.evictable), key=lambda s: (s.priority, s.last_used))
    for slot in candidates:
        victims.append(slot)
        free += slot.charge
        if need <= free:
            return victims
    return None

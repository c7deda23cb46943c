"""What this process holds in memory, as the supervisor accounts it."""

from __future__ import annotations

import mlx.core as mx
import psutil

from protocol.control import MemoryReport
from worker.backends import Engine

_process = psutil.Process()


def memory_report(engine: Engine | None = None) -> MemoryReport:
    """`engine` adds what its KV caches and prompt cache hold; MLX's figures include them."""
    kv_cache, prompt_cache = engine.cache_bytes() if engine is not None else (0, 0)
    return MemoryReport(
        mlx_active_bytes=mx.get_active_memory(),
        mlx_peak_bytes=mx.get_peak_memory(),
        mlx_cache_bytes=mx.get_cache_memory(),
        rss_bytes=_process.memory_info().rss,
        kv_cache_bytes=kv_cache,
        prompt_cache_bytes=prompt_cache,
    )

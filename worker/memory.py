"""What this process holds in memory, as the supervisor accounts it."""

from __future__ import annotations

import mlx.core as mx
import psutil

from protocol.control import MemoryReport

_process = psutil.Process()


def memory_report() -> MemoryReport:
    return MemoryReport(
        mlx_active_bytes=mx.get_active_memory(),
        mlx_peak_bytes=mx.get_peak_memory(),
        mlx_cache_bytes=mx.get_cache_memory(),
        rss_bytes=_process.memory_info().rss,
    )

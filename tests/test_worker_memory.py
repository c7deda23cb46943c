"""The worker's memory: reported by kind, its footprint as the OS counts it, MLX bounded by the model's charge."""

from __future__ import annotations

import re

import mlx.core as mx
import msgspec

from protocol.control import MemoryReport
from tests.harness import wait_until
from worker.memory import MIN_BUFFER_CACHE, bound_memory

MB = 2**20


def test_the_report_splits_what_the_process_holds_by_kind():
    report = MemoryReport(
        mlx_active_bytes=700 * MB,
        mlx_peak_bytes=900 * MB,
        mlx_cache_bytes=30 * MB,
        rss_bytes=1000 * MB,
        footprint_bytes=1100 * MB,  # macOS: the physical footprint counts Metal buffers RSS misses
        weights_bytes=500 * MB,
        kv_cache_bytes=120 * MB,
        prompt_cache_bytes=60 * MB,
        runtime_bytes=90 * MB,
    )
    kinds = report.by_kind()
    assert report.resident_bytes == 1100 * MB
    assert kinds == {
        "weights": 500 * MB,
        "kv_cache": 120 * MB,
        "prompt_cache": 60 * MB,
        "activations": 20 * MB,
        "mlx_buffer_cache": 30 * MB,
        "runtime": 90 * MB,
        "other": 280 * MB,
    }
    assert sum(kinds.values()) == report.resident_bytes
    # A runtime larger than all outside MLX (pages the OS has since reclaimed) is capped: no kind is negative.
    shrunk = msgspec.structs.replace(report, runtime_bytes=500 * MB).by_kind()
    assert shrunk["runtime"] == 370 * MB and shrunk["other"] == 0 and sum(shrunk.values()) == report.resident_bytes


def test_a_gguf_workers_llama_server_is_its_weights_and_kv_cache_outside_mlx():
    report = MemoryReport(
        mlx_active_bytes=0,
        mlx_peak_bytes=0,
        mlx_cache_bytes=0,
        rss_bytes=600 * MB,  # the worker's 200 MB and its llama-server's 400 MB
        footprint_bytes=600 * MB,
        weights_bytes=100 * MB,  # the GGUF file llama-server maps
        kv_cache_bytes=300 * MB,  # the rest of llama-server's resident set
        outside_mlx_bytes=400 * MB,
    )
    kinds = report.by_kind()
    assert kinds == {
        "weights": 100 * MB,
        "kv_cache": 300 * MB,
        "prompt_cache": 0,
        "activations": 0,
        "mlx_buffer_cache": 0,
        "runtime": 0,  # not measured in this report
        "other": 200 * MB,  # the worker's own process
    }
    assert sum(kinds.values()) == report.resident_bytes


def cache_limit() -> int:
    limit = mx.set_cache_limit(0)  # MLX reads it back only by setting it
    mx.set_cache_limit(limit)
    return limit


def test_mlx_is_bounded_by_the_charge_and_its_buffer_cache_never_raised():
    before_cache, before_limit = cache_limit(), mx.get_memory_limit()
    try:
        bound_memory(charge_bytes=64 * 2**30, cache_budget_bytes=512 * MB)  # a generous charge
        assert cache_limit() == before_cache  # MLX's own limit is kept when the charge leaves more
        assert mx.get_memory_limit() == 64 * 2**30
        bound_memory(charge_bytes=1, cache_budget_bytes=512 * MB)  # nothing to spare
        assert cache_limit() == min(MIN_BUFFER_CACHE, before_cache)
        assert mx.get_memory_limit() > 512 * MB  # never below what the weights and the cache budget need
    finally:
        mx.set_cache_limit(before_cache)
        mx.set_memory_limit(before_limit)


def test_a_served_model_reports_its_weights_and_footprint_and_logs_its_bounds(client, server):
    client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0
    )
    assert wait_until(lambda: server.models()["smollm2"].worker_memory is not None, timeout=60)
    report = server.models()["smollm2"].worker_memory
    assert report.weights_bytes > 50 * MB  # the bundled model's weights (4-bit, or float32 on a Linux CPU)
    assert report.footprint_bytes >= report.rss_bytes > report.weights_bytes
    # The runtime, measured before the weights loaded: the interpreter with MLX, mlx-lm and transformers imported
    # (about 90 MB on Linux), not yet any of the model.
    assert 30 * MB < report.runtime_bytes < report.footprint_bytes - report.weights_bytes
    kinds = report.by_kind()
    assert kinds["runtime"] == report.runtime_bytes
    # Every byte the OS charges is in one kind. The kinds are exact but for activations, clamped at 0 when MLX
    # holds less than its accounts (never by more than a step's worth): 5% of the footprint is generous.
    assert abs(sum(kinds.values()) - report.footprint_bytes) <= 0.05 * report.footprint_bytes, kinds
    assert all(v >= 0 for v in kinds.values()), kinds
    pattern = r"worker\[smollm2\].*memory: charge (\d+) MB.*buffer cache bounded at (\d+) MB"
    bounds = re.findall(pattern, server.log_text())
    assert bounds and int(bounds[-1][0]) == round(0.3 * 1024)  # the config's memory_gb: 0.3

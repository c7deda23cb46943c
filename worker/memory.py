"""What this process holds in memory, as the supervisor accounts it, and the bounds MLX keeps to.

Every byte by kind: the weights (MLX's active memory once the model is loaded, before any request), the live
sequences' KV caches and the prompt cache (the engine's figures, part of MLX's active memory), MLX's buffer
cache (freed buffers kept for reuse, not active), the runtime (the process measured as the model starts to load:
the interpreter, the imported libraries, MLX, mlx-lm and transformers, and the threads' stacks), and the rest
(the tokenizer, Python objects, the allocator's free pages): its footprint less MLX's active and cached memory
and the runtime.

Measured on Linux (a CPU, the bundled 135M model): the runtime is 89 MB, about 40 MB of it the shared
libraries' mapped pages. MLX's CPU buffers come from malloc, so what glibc keeps after MLX frees them (or after
MLX's buffer cache lets them go) shows as "other" until it is handed back: see map_large_buffers and
FreedMemory.

The footprint is what the OS charges the process: on macOS the physical footprint (what Activity Monitor
shows; RSS undercounts Metal buffers there), elsewhere RSS.

On Metal, MLX's buffer cache is bounded only by its memory limit (by default 1.5x the GPU's working set), so
a busy worker's freed activations pile up in it: `bound_memory` caps it at what the model's budget charge
leaves after the weights, the KV/prompt-cache budget and the process outside MLX, and sets MLX's memory limit
to the charge itself. (On a CPU, MLX caches 32 MB by default and enforces no memory limit.)

A gguf worker computes in its llama-server child, not in MLX: the report's RSS and footprint cover every process
the worker started, and llama-server's resident set is split into weights (the GGUF files it maps, at most its
RSS) and kv_cache (the rest: its KV cache, allocated whole at start for parallel x context, its prompt cache in
RAM and its compute buffers), both also counted as outside MLX so the kinds still add up to the footprint.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import sys

import mlx.core as mx
import psutil

from protocol.control import MemoryReport
from worker.backends import Engine

log = logging.getLogger("worker.memory")
_process = psutil.Process()
_weights_bytes = 0  # MLX's active memory right after the model loaded
_child_weights_bytes: int | None = None  # a gguf worker: the GGUF files its llama-server maps
_runtime_bytes = 0  # the footprint outside MLX as the model started to load
# Benchmarks only (bench/soak.py --allocators): "trim" keeps glibc's dynamic mmap threshold (malloc_trim only),
# "stock" does neither, to measure what each saves side by side. Nothing else sets it.
BENCH_ALLOCATOR = os.environ.get("MLX_WORKER_BENCH_ALLOCATOR", "")
M_MMAP_THRESHOLD = -3  # mallopt's parameter (malloc.h)
MMAP_THRESHOLD = 1 << 20
MIN_BUFFER_CACHE = 32 * 1024**2  # below this, every step would allocate afresh (MLX's CPU default)


def _footprint_reader():
    """macOS: proc_pid_rusage's ri_phys_footprint (rusage_info_v0: a 16-byte uuid, then uint64 fields, the
    eighth of which is the physical footprint). Elsewhere None: RSS is the OS's own figure."""
    if sys.platform != "darwin":
        return None
    try:
        libproc = ctypes.CDLL(ctypes.util.find_library("proc") or "/usr/lib/libproc.dylib")
    except OSError:
        return None
    buffer = (ctypes.c_uint64 * 12)()  # rusage_info_v0 is 16 + 10 * 8 bytes

    def read() -> int:
        if libproc.proc_pid_rusage(os.getpid(), 0, ctypes.byref(buffer)) != 0:
            return 0
        return buffer[2 + 7]  # after the uuid (2 words): user, system, idle wakeups, interrupts, pageins, wired, rss

    return read


_footprint = _footprint_reader()


def footprint_bytes() -> int:
    rss = _process.memory_info().rss
    return max(_footprint(), rss) if _footprint else rss


class FreedMemory:
    """Hands memory the process has freed back to the OS, every `every` engine steps and whenever the engine
    goes idle. Measured under the soak on Linux: the worker's memory outside MLX grew from 263 MB (30 s) to
    638 MB (7 min) while MLX's own figures stayed flat. MLX's CPU allocator frees its buffers with free(), and
    glibc keeps freed memory in its arenas (its mmap threshold also rises to the largest chunk freed, up to
    32 MB, so later buffers come from those arenas). malloc_trim(0) hands their free pages back: after the
    same 16 requests in-process, 127 MB outside MLX with it against 346 MB without. Elsewhere (macOS, musl)
    this does nothing."""

    def __init__(self, every: int = 256):
        self.every = every
        self._steps = 0
        self._trim = _malloc_trim()

    def after_step(self, busy: bool) -> None:
        if self._trim is None:
            return
        self._steps += 1
        if not busy or self._steps >= self.every:
            self._trim(0)
            self._steps = 0


def _glibc(function: str):
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), function)
    except (OSError, AttributeError):  # not glibc
        return None


def _malloc_trim():
    return None if BENCH_ALLOCATOR == "stock" else _glibc("malloc_trim")


def map_large_buffers() -> None:
    """Called before the model loads: every allocation of 1 MB or more (MLX's weights, KV caches, logits and
    prefill activations) gets pages of its own from mmap, handed back to the OS the moment it is freed.
    glibc's default threshold rises to the largest chunk freed (up to 32 MB), after which such buffers come from
    the arenas, where what they leave behind stays resident until malloc_trim, and where the pieces that stay
    in use (small Python and tokenizer objects among them) pin whole pages. Measured under the 15-minute soak
    (16 streams, two servers side by side, Linux CPU): with malloc_trim alone the worker's RSS rose from 1,077 MB
    after warm-up to 1,927 MB at 900 s; with this as well, from 1,008 MB to 1,266 MB, of which 294 MB was the
    prompt cache filling towards its budget. Setting the threshold also stops it moving. MLX's buffer cache
    still keeps freed buffers for reuse, so steady decoding maps little anew (requests/s were alike)."""
    mallopt = _glibc("mallopt") if BENCH_ALLOCATOR not in ("stock", "trim") else None
    if mallopt is not None and not mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD):
        log.warning("mallopt(M_MMAP_THRESHOLD) failed: large buffers stay in glibc's arenas")


def mark_runtime() -> None:
    """Called once the engine's libraries are imported and before the model loads: what the process holds then
    is its runtime, reported as its own kind."""
    global _runtime_bytes
    _runtime_bytes = max(footprint_bytes() - mx.get_active_memory() - mx.get_cache_memory(), 0)


def bound_memory(charge_bytes: int | None, cache_budget_bytes: int) -> None:
    """Called once the model is loaded. `charge_bytes`: what the supervisor charges this model (None:
    standalone, MLX's defaults stay); `cache_budget_bytes`: the engine's budget for live KV + prompt cache."""
    global _weights_bytes
    _weights_bytes = mx.get_active_memory()
    if charge_bytes is None:
        return
    outside_mlx = max(footprint_bytes() - _weights_bytes - mx.get_cache_memory(), 0)
    spare = charge_bytes - _weights_bytes - cache_budget_bytes - outside_mlx
    default = mx.set_cache_limit(0)  # MLX's own limit: the memory limit on Metal, 32 MB on a CPU
    buffer_cache = min(max(spare, MIN_BUFFER_CACHE), default)  # lowered where the charge asks, never raised
    mx.set_cache_limit(buffer_cache)
    # A memory_gb that understates the model is the config's mistake: MLX is not made to thrash below what the
    # weights and the cache budget need (the supervisor charges the reported footprint when it is larger).
    mx.set_memory_limit(max(charge_bytes, _weights_bytes + outside_mlx + cache_budget_bytes + buffer_cache))
    log.info(
        "memory: charge %d MB, weights %d MB, KV + prompt cache budget %d MB, outside MLX %d MB: "
        "MLX's buffer cache bounded at %d MB",
        *(n // 2**20 for n in (charge_bytes, _weights_bytes, cache_budget_bytes, outside_mlx, buffer_cache)),
    )


def weights_in_child(nbytes: int) -> None:
    """A gguf worker, once llama-server has loaded: its weights are the `nbytes` of GGUF files that child maps."""
    global _child_weights_bytes
    _child_weights_bytes = nbytes


def memory_report(engine: Engine | None = None) -> MemoryReport:
    """`engine` adds what its KV caches and prompt cache hold; MLX's figures include them. A gguf worker's
    llama-server is its weights and KV cache, outside MLX (see the module's docstring)."""
    kv_cache, prompt_cache = engine.cache_bytes() if engine is not None else (0, 0)
    children = _children_rss()
    weights, outside_mlx = _weights_bytes, 0
    if _child_weights_bytes is not None:
        child_weights = min(_child_weights_bytes, children)
        weights, kv_cache, outside_mlx = weights + child_weights, kv_cache + children - child_weights, children
    return MemoryReport(
        mlx_active_bytes=mx.get_active_memory(),
        mlx_peak_bytes=mx.get_peak_memory(),
        mlx_cache_bytes=mx.get_cache_memory(),
        rss_bytes=_process.memory_info().rss + children,
        kv_cache_bytes=kv_cache,
        prompt_cache_bytes=prompt_cache,
        weights_bytes=weights,
        footprint_bytes=footprint_bytes() + children,
        outside_mlx_bytes=outside_mlx,
        runtime_bytes=_runtime_bytes,
    )


def _children_rss() -> int:
    """The resident sets of every process this one started (a gguf worker's llama-server)."""
    total = 0
    for child in _process.children(recursive=True):
        with contextlib.suppress(psutil.Error):  # it exited meanwhile
            total += child.memory_info().rss
    return total

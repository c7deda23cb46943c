"""GET /system/stats (also /api/v1/system/stats): the host's CPU, memory and disk (psutil), the accelerator as
MLX describes it, and each worker's MLX memory as it last reported it to the supervisor.

MLX's memory counters are per process, so the gateway's own would say nothing: the workers' figures come from
their heartbeats. In a fleet the workers of every host up are listed as `model@host`, and `budget` is per
host. A figure this host cannot give (no Metal or CUDA device, no load average) is null, and `absent` says why,
rather than a made-up zero.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time

import msgspec
import psutil
from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.errors import APIError
from protocol.ctl import ListModels

_PROCESS = psutil.Process()


@functools.cache
def _accelerator() -> dict:
    """What MLX sees (imported here once, on first use: the gateway needs MLX for nothing else)."""
    import mlx.core as mx

    if mx.metal.is_available():
        backend = "metal"
    elif hasattr(mx, "cuda") and mx.cuda.is_available():
        backend = "cuda"
    else:
        backend = "cpu"
    info = {k: v for k, v in mx.device_info().items() if isinstance(v, int | float | str)}
    total = info.get("memory_size")
    working_set = info.get("max_recommended_working_set_size")
    absent = {}
    if total is None:
        absent["memory_total_bytes"] = f"MLX reports no device memory on this host (backend {backend})"
    if working_set is None:
        absent["recommended_working_set_bytes"] = "only Metal reports a recommended working set"
    return {
        "backend": backend,
        "mlx_version": mx.__version__,
        "device": info,
        "memory_total_bytes": total,
        "recommended_working_set_bytes": working_set,
        "absent": absent,
    }


def _host(disk_path: str) -> dict:
    vm, swap = psutil.virtual_memory(), psutil.swap_memory()
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    disk = psutil.disk_usage(disk_path if os.path.exists(disk_path) else "/")
    return {
        "cpu": {
            "logical_cores": psutil.cpu_count(),
            "physical_cores": psutil.cpu_count(logical=False),
            "percent": psutil.cpu_percent(interval=None),  # since the previous call (primed at start-up)
            "load_average": load,
        },
        "memory": {
            "total_bytes": vm.total,
            "available_bytes": vm.available,
            "used_bytes": vm.used,
            "percent": vm.percent,
            "swap_total_bytes": swap.total,
            "swap_used_bytes": swap.used,
        },
        "disk": {"path": disk_path, "total_bytes": disk.total, "free_bytes": disk.free, "percent": disk.percent},
        "gateway": {
            "pid": _PROCESS.pid,
            "rss_bytes": _PROCESS.memory_info().rss,
            "threads": _PROCESS.num_threads(),
            "cpu_percent": _PROCESS.cpu_percent(interval=None),
        },
    }


async def system_stats(request: Request) -> JSONResponse:
    state = request.app.state
    accelerator = await asyncio.to_thread(_accelerator)
    body = {"time": time.time(), **_host(state.settings.run_dir), "accelerator": accelerator}
    answers = await state.hosts.ask_all(lambda call_id: ListModels(call_id=call_id), 2.0)
    replies = {link.name: reply for link, reply in answers if not isinstance(reply, APIError)}
    if not replies:
        body["workers"] = body["budget"] = None
        body["absent"] = {"workers": f"the supervisor did not answer: {answers[0][1].message}"}
        return JSONResponse(body)
    fleet = state.hosts.fleet
    body["workers"] = {
        (f"{m.id}@{host}" if fleet else m.id): {
            "pid": m.pid,
            "state": m.state,
            "charged_bytes": m.charged_bytes,
            **({"host": host} if fleet else {}),
            **(msgspec.structs.asdict(m.worker_memory) if m.worker_memory else {}),  # rss, mlx_*, caches
        }
        for host, reply in replies.items()
        for m in reply.models
        if m.pid is not None
    }
    budgets = {host: _budget(reply.memory) for host, reply in replies.items()}
    body["budget"] = budgets if fleet else next(iter(budgets.values()))
    return JSONResponse(body)


def _budget(memory) -> dict | None:
    return memory and {
        "budget_bytes": memory.budget_bytes,
        "used_bytes": memory.used_bytes,
        "reserved_bytes": memory.reserved_bytes,
        "free_bytes": memory.free_bytes,
    }


def prime() -> None:
    """psutil's CPU percentages are relative to the previous call: make the first request's meaningful."""
    psutil.cpu_percent(interval=None)
    _PROCESS.cpu_percent(interval=None)

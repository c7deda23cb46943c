"""Model management (the paths of the server this one replaces):

POST /api/v1/models/{model_id}/load     load it (evicting idle models if needed) and wait until it serves
POST /api/v1/models/{model_id}/unload   drain its requests and stop its worker
GET  /api/v1/models/memory/usage        the host's memory, the budget, and what each loaded model holds

Loading and unloading need an admin service (`admin: true` in the config; keyless development mode is one).
Pulls and aliases are in pulls.py and aliases.py.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.auth import require_admin
from protocol.ctl import ListModels, Load, Unload

GB = 1024**3


def _gb(n: int) -> float:
    return round(n / GB, 3)


async def load_model(request: Request) -> JSONResponse:
    require_admin(request)
    state, model = request.app.state, request.path_params["model_id"]
    located = await state.supervisor.call(
        lambda call_id: Load(call_id=call_id, model=model), state.settings.load_timeout
    )
    return JSONResponse({"id": located.model_id, "status": "loaded", "evicted": located.evicted})


async def unload_model(request: Request) -> JSONResponse:
    require_admin(request)
    state, model = request.app.state, request.path_params["model_id"]
    reply = await state.supervisor.call(
        lambda call_id: Unload(call_id=call_id, model=model), state.settings.load_timeout
    )
    return JSONResponse({"id": reply.model_id, "status": "unloaded" if reply.pid else "not_loaded", "pid": reply.pid})


async def memory_usage(request: Request) -> JSONResponse:
    state = request.app.state
    reply = await state.supervisor.call(lambda call_id: ListModels(call_id=call_id), state.settings.connect_timeout)
    memory = reply.memory
    loaded = [m for m in reply.models if m.pid is not None]
    return JSONResponse(
        {
            "total_gb": _gb(memory.host_memory_bytes),  # the host's, as in the seed's example
            "used_gb": _gb(memory.used_bytes),  # charged by models whose worker runs
            "budget_gb": _gb(memory.budget_bytes),
            "reserved_gb": _gb(memory.reserved_bytes),
            "available_gb": _gb(memory.free_bytes),
            "models_loaded": {m.id: _gb(m.charged_bytes) for m in loaded},
            "models": {
                m.id: {
                    "state": m.state,
                    "pid": m.pid,
                    "charged_gb": _gb(m.charged_bytes),
                    "resident_gb": _gb(m.memory_bytes),
                    "estimate_gb": _gb(m.memory_estimate_bytes),
                    "pinned": m.pinned,
                    "in_flight": m.in_flight,
                }
                for m in reply.models
            },
        }
    )

"""Model management (the paths of the server this one replaces):

POST /api/v1/models/{model_id}/load     load it (evicting idle models if needed) and wait until it serves;
                                        `{"host": NAME}` loads it on that host of a fleet, else where placement says
POST /api/v1/models/{model_id}/unload   drain its requests and stop its worker (on every host, or `{"host": NAME}`)
GET  /api/v1/models/memory/usage        the hosts' memory, the budget and what each loaded model holds, summed
                                        over the hosts up, and each host's own under `hosts`

Loading and unloading need an admin service (`admin: true` in the config; keyless development mode is one).
Pulls and aliases are in pulls.py and aliases.py.
"""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.auth import require_admin
from gateway.errors import APIError
from gateway.request_body import decode_request
from protocol.ctl import ListModels, Load, ModelList, Unload

GB = 1024**3


class OnHost(msgspec.Struct, kw_only=True):
    host: str | None = None  # a fleet's host; None: placement decides (load) or every host (unload)


async def _on_host(request: Request) -> str | None:
    body = await request.body()
    return decode_request(body, OnHost).host if body.strip() else None


def _gb(n: int) -> float:
    return round(n / GB, 3)


async def load_model(request: Request) -> JSONResponse:
    require_admin(request)
    state, model = request.app.state, request.path_params["model_id"]
    link = await state.workers.placement.for_load(model, await _on_host(request))
    located = await link.client.call(lambda call_id: Load(call_id=call_id, model=model), state.settings.load_timeout)
    return JSONResponse({"id": located.model_id, "status": "loaded", "evicted": located.evicted, "host": link.name})


async def unload_model(request: Request) -> JSONResponse:
    require_admin(request)
    state, model = request.app.state, request.path_params["model_id"]
    host = await _on_host(request)
    hosts = [state.hosts.get(host)] if host is not None else state.hosts.links
    results = []
    for link in hosts:  # in turn: each waits for its worker to drain
        try:
            unload = link.client.call(lambda call_id: Unload(call_id=call_id, model=model), state.settings.load_timeout)
            results.append((link, await unload))
        except APIError as exc:  # not on that host, or the host is down: the others answer
            results.append((link, exc))
    unloaded = {link.name: reply for link, reply in results if not isinstance(reply, APIError)}
    if not unloaded:
        raise results[0][1]
    pids = {name: reply.pid for name, reply in unloaded.items() if reply.pid}
    body = {
        "id": next(iter(unloaded.values())).model_id,
        "status": "unloaded" if pids else "not_loaded",
        "pid": next(iter(pids.values()), None),
    }
    return JSONResponse(body | ({"hosts": pids} if state.hosts.fleet else {}))


def budget_view(reply: ModelList) -> dict:
    """One host's memory, as /api/v1/models/memory/usage shows it."""
    memory = reply.memory
    loaded = [m for m in reply.models if m.pid is not None]
    return {
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


async def memory_usage(request: Request) -> JSONResponse:
    state = request.app.state
    answers = await state.hosts.ask_all(lambda call_id: ListModels(call_id=call_id), state.settings.connect_timeout)
    views = {link.name: budget_view(reply) for link, reply in answers if not isinstance(reply, APIError)}
    if not views:
        raise answers[0][1]
    hosts = {
        link.name: {"up": True, "endpoint": link.endpoint, **views[link.name]}
        if link.name in views
        else {"up": False, "endpoint": link.endpoint, "error": reply.message}
        for link, reply in answers
    }
    if not state.hosts.fleet:
        return JSONResponse(next(iter(views.values())) | {"hosts": hosts})
    body = {
        key: round(sum(v[key] for v in views.values()), 3)
        for key in ("total_gb", "used_gb", "budget_gb", "reserved_gb")
    }
    body["available_gb"] = round(sum(v["available_gb"] for v in views.values()), 3)
    body["models_loaded"], body["models"] = {}, {}
    for name, view in views.items():
        for model_id, gb in view["models_loaded"].items():
            body["models_loaded"][model_id] = round(body["models_loaded"].get(model_id, 0) + gb, 3)
        for model_id, detail in view["models"].items():
            known = body["models"].get(model_id)
            if known is None or (known["pid"] is None and detail["pid"] is not None):  # a host that holds it
                body["models"][model_id] = detail | {"host": name}
    return JSONResponse(body | {"hosts": hosts})

"""GET /v1/models (also /api/v1/models): configured models with their load state, over every host up.

In a fleet a model listed by several hosts appears once: `hosts` maps each host that may run it to its state
there, `state` is the most useful of them (ready, else starting, ...) and `memory_bytes` their sum.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.auth import route_model
from gateway.errors import APIError
from protocol.ctl import ListModels, ModelState

OWNER = "mlx-llm-server"
# Which state a model listed by several hosts shows: the first of these any host reports.
PREFERRED = (ModelState.READY, ModelState.STARTING, ModelState.STOPPING, ModelState.STOPPED, ModelState.FAILED)


async def list_models(request: Request) -> JSONResponse:
    """The models the calling service may use."""
    state = request.app.state
    _, allowed = route_model(getattr(request.state, "service", None), None)
    answers = await state.hosts.ask_all(
        lambda call_id: ListModels(call_id=call_id, allowed=allowed), state.settings.connect_timeout
    )
    replies = [(link.name, reply) for link, reply in answers if not isinstance(reply, APIError)]
    if not replies:
        raise answers[0][1]
    data: dict[str, dict] = {}
    for host, reply in replies:
        for m in reply.models:
            entry = data.setdefault(
                m.id,
                {
                    "id": m.id,
                    "object": "model",
                    "created": 0,
                    "owned_by": OWNER,
                    "aliases": m.aliases,
                    "type": m.type,
                    "state": m.state,
                    "context_length": m.context_length,
                    "memory_bytes": 0,
                    "hosts": {},
                },
            )
            entry["hosts"][host] = m.state
            entry["memory_bytes"] += m.memory_bytes
            entry["state"] = min(entry["hosts"].values(), key=PREFERRED.index)
            if m.state == ModelState.READY:
                entry["context_length"] = m.context_length  # what the loaded worker reports
    return JSONResponse({"object": "list", "data": list(data.values())})

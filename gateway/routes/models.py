"""GET /v1/models (also /api/v1/models): configured models with their load state."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.auth import route_model
from protocol.ctl import ListModels

OWNER = "mlx-llm-server"


async def list_models(request: Request) -> JSONResponse:
    """The models the calling service may use."""
    state = request.app.state
    _, allowed = route_model(getattr(request.state, "service", None), None)
    reply = await state.supervisor.call(
        lambda call_id: ListModels(call_id=call_id, allowed=allowed), state.settings.connect_timeout
    )
    data = [
        {
            "id": m.id,
            "object": "model",
            "created": 0,
            "owned_by": OWNER,
            "aliases": m.aliases,
            "type": m.type,
            "state": m.state,
            "context_length": m.context_length,
            "memory_bytes": m.memory_bytes,
        }
        for m in reply.models
    ]
    return JSONResponse({"object": "list", "data": data})

"""GET /api/v1/health: the supervisor and each loaded worker count as alive only if a ping got through;
models marked failed are listed.

Worker pings travel gateway -> supervisor -> worker's generation loop -> back, so a worker whose generation
thread is wedged shows as not alive even while its process and sockets are up.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.errors import APIError
from protocol.ctl import Status

PING_TIMEOUT = 2.0


async def health(request: Request) -> JSONResponse:
    state = request.app.state
    started = time.perf_counter()
    try:
        report = await state.supervisor.call(
            lambda call_id: Status(call_id=call_id, ping_timeout=PING_TIMEOUT), PING_TIMEOUT + 1
        )
    except APIError as exc:
        body = {"status": "unavailable", "supervisor": {"alive": False, "error": exc.message}, "workers": {}}
        return JSONResponse(body, status_code=503)
    workers = {
        m.id: {
            "alive": bool(m.alive),
            "state": m.state,
            "pid": m.pid,
            "ping_ms": m.ping_ms and round(m.ping_ms, 2),
            "memory_bytes": m.memory_bytes,
        }
        for m in report.models
        if m.pid is not None
    }
    # A worker still loading has not failed anything yet; a ready one that misses its ping has. A model marked
    # failed (it crashed too often, or its load failed) degrades the status without failing the check: the
    # other models still serve, so a load balancer should keep this gateway.
    healthy = all(w["alive"] for w in workers.values() if w["state"] == "ready")
    failed = {m.id: m.last_error for m in report.models if m.state == "failed"}
    body = {
        "status": "ok" if healthy and not failed else "degraded",
        "supervisor": {
            "alive": True,
            "pid": report.pid,
            "uptime_seconds": round(report.uptime_seconds, 1),
            "ping_ms": round((time.perf_counter() - started) * 1000, 1),
        },
        "workers": workers,
        "failed_models": failed,
    }
    return JSONResponse(body, status_code=200 if healthy else 503)

"""Liveness and readiness, for load balancers and orchestrators.

GET /api/v1/health (also /health): liveness. This gateway process answers; nothing else is asked, so it stays
cheap and a slow model never gets a healthy gateway restarted.

GET /api/v1/health/ready: readiness, 200 or 503 with each component's verdict and response time:
- the supervisor answers a Status call;
- every ready worker answered a ping within READY_PING_TIMEOUT seconds (default 2). Worker pings travel
  gateway -> supervisor -> worker's generation loop -> back, so a worker whose generation thread is wedged
  fails even while its process and sockets are up. A worker still loading has not failed anything yet;
  a worker that crashed fails until its model is loaded again (by a request, `ctl load` or the dashboard);
- Redis answers PING, when REDIS_URL is configured.
Models marked failed (too many crashes, or a failed load) make the status `degraded` but not 503: the other
models still serve, so a load balancer should keep this gateway.

In a fleet the supervisor's verdict is given per host under `hosts` (a host down is not asked: its error says
why it is down), workers are keyed `model@host`, and the gateway is ready while one host is: hosts down make
it `degraded`.

Both paths need no key, and say little without one: readiness gives the status and each component's `ok`
(supervisor or each host, workers, redis); pids, per-worker figures, error text and failed models only to a request that
carries an admin service's key or token (keyless development mode: every request).
"""

from __future__ import annotations

import asyncio
import os
import time

from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.errors import APIError
from gateway.sessions import SessionStoreUnavailable
from protocol.ctl import Status

STARTED = time.monotonic()


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 2)


def _for_admin(request: Request) -> bool:
    return request.app.state.authenticator.is_admin(request.headers)


async def health(request: Request) -> JSONResponse:
    body = {"status": "ok", "uptime_seconds": round(time.monotonic() - STARTED, 1)}
    return JSONResponse(body | ({"pid": os.getpid()} if _for_admin(request) else {}))


def _brief(body: dict) -> dict:
    """What anyone may read: the status and whether each component is ok (in a fleet, each host)."""
    brief = {"status": body["status"]}
    if "hosts" in body:
        brief["hosts"] = {name: {"ok": host["ok"]} for name, host in body["hosts"].items()}
    else:
        brief["supervisor"] = {"ok": body["supervisor"]["ok"]}
    brief["workers"] = {"ok": all(w["ok"] for w in body["workers"].values())}
    if "redis" in body:
        brief["redis"] = {"ok": body["redis"]["ok"]}
    return brief


async def _supervisor_and_workers(state, link) -> tuple[dict, dict, dict]:
    timeout = state.settings.ready_ping_timeout
    started = time.perf_counter()
    if state.hosts.fleet and not link.up:
        return {"ok": False, "error": link.why_down, "endpoint": link.endpoint}, {}, {}
    try:
        report = await link.client.call(lambda call_id: Status(call_id=call_id, ping_timeout=timeout), timeout + 1)
    except APIError as exc:
        return {"ok": False, "error": exc.message, "response_ms": _ms(started)}, {}, {}
    supervisor = {
        "ok": True,
        "pid": report.pid,
        "uptime_seconds": round(report.uptime_seconds, 1),
        "response_ms": _ms(started),
    }
    workers = {}
    for m in report.models:
        if m.pid is None and not (m.crashed and m.state != "failed"):
            continue
        # A crashed worker fails until its model is loaded again; a model marked failed only degrades (below).
        ok = not m.crashed and (bool(m.alive) or m.state != "ready")
        workers[m.id] = {
            "ok": ok,
            "alive": bool(m.alive),  # its ping came back (a worker still loading is not pinged)
            "state": m.state,
            "pid": m.pid,
            "ping_ms": m.ping_ms and round(m.ping_ms, 2),
            "memory_bytes": m.memory_bytes,
        }
        if not ok:
            workers[m.id]["error"] = m.last_error if m.crashed else f"no pong within {timeout:g}s"
    failed = {m.id: m.last_error for m in report.models if m.state == "failed"}
    return supervisor, workers, failed


async def _redis(sessions, timeout: float) -> dict:
    """A PING over the session store's own connection pool (the one requests use)."""
    started = time.perf_counter()
    try:
        await asyncio.wait_for(sessions.ping(), timeout)
        return {"ok": True, "response_ms": _ms(started)}
    except (SessionStoreUnavailable, TimeoutError) as exc:
        return {"ok": False, "error": str(exc) or type(exc).__name__, "response_ms": _ms(started)}


async def ready(request: Request) -> JSONResponse:
    state = request.app.state
    links = state.hosts.links
    checks = [_supervisor_and_workers(state, link) for link in links]
    if state.settings.redis_url:
        checks.append(_redis(state.sessions, state.settings.ready_ping_timeout))
    started = time.perf_counter()
    results = await asyncio.gather(*checks)
    hosts, rest = dict(zip((link.name for link in links), results[: len(links)], strict=True)), results[len(links) :]
    if state.hosts.fleet:  # workers and failed models are told apart by host
        components = {"hosts": {name: supervisor for name, (supervisor, _, _) in hosts.items()}, "workers": {}}
        failed = {}
        for name, (_, workers, failed_here) in hosts.items():
            components["workers"] |= {f"{model}@{name}": check for model, check in workers.items()}
            failed |= {f"{model}@{name}": error for model, error in failed_here.items()}
        up = [supervisor["ok"] for supervisor in components["hosts"].values()]
        ok, degraded = any(up), bool(failed) or not all(up)
    else:
        supervisor, workers, failed = next(iter(hosts.values()))
        components = {"supervisor": supervisor, "workers": workers}
        ok, degraded = supervisor["ok"], bool(failed)
    if rest:
        components["redis"] = rest[0]
    ok = ok and all(w["ok"] for w in components["workers"].values()) and all(r["ok"] for r in rest)
    body = {
        "status": "not_ready" if not ok else "degraded" if degraded else "ready",
        "response_ms": _ms(started),
        **components,
        "failed_models": failed,
    }
    return JSONResponse(body if _for_admin(request) else _brief(body), status_code=200 if ok else 503)

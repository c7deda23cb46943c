"""The Starlette application: the API dialects' routes (gateway/dialects/) and the server's own, middleware, error
handlers, and what it holds for its lifetime: ZeroMQ clients of the supervisors and workers, the generation core
(gateway/core/) with its app-wide observers, the session store and rate limiter (in Redis or in memory)."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import zmq.asyncio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from gateway import dialects, metrics, sse
from gateway.activity import ActivityLog, clear_activity, list_activity
from gateway.auth import Authenticator, KeyRing, MetricsKeys, TokenIssuer, is_loopback
from gateway.batches.files import FileStore
from gateway.batches.runner import Batches
from gateway.batches.state import make_batch_store
from gateway.config import GatewayConfig, GatewaySettings, load_gateway_config
from gateway.core.caller import ClientGone
from gateway.core.generation import GenerationCore
from gateway.dialects.dialect import BASE_PATHS
from gateway.dialects.responses.store import make_response_store
from gateway.errors import APIError, internal_error
from gateway.hosts import Hosts, fleet_keys
from gateway.middleware.admission import Admission
from gateway.middleware.auth import Auth
from gateway.middleware.body_limit import BodyLimit
from gateway.middleware.browser_guard import BrowserGuard
from gateway.middleware.cors import JSONCORSMiddleware
from gateway.middleware.request_context import RequestContext
from gateway.middleware.trusted_hosts import TrustedHosts
from gateway.openapi import routes as openapi
from gateway.ratelimit import RateLimiter
from gateway.routes import aliases, pulls, system
from gateway.routes.admin import load_model, memory_usage, unload_model
from gateway.routes.auth import issue_token
from gateway.routes.health import health, ready
from gateway.routes.models import list_models
from gateway.routes.sessions import create_session, delete_session, get_session, list_sessions, session_messages
from gateway.sessions import make_session_store
from gateway.telemetry import Telemetry
from gateway.worker_client import WorkerPool
from protocol import ErrorCode

log = logging.getLogger("gateway")
DASHBOARD = Path(__file__).parent / "dashboard"  # plain static files: no build step

CORS_HEADERS = ["authorization", "content-type", "x-api-key", "x-request-id", "anthropic-version", "anthropic-beta"]
CORS_EXPOSED = [
    "x-request-id",
    "retry-after",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
]


class RefusedToStart(Exception):
    """The configuration is unsafe or invalid: the gateway must not serve."""


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return exc.response(request.url.path)


async def _client_gone(request: Request, exc: ClientGone) -> Response:
    return Response(status_code=499)  # nobody is listening any more; its generation has been aborted


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    code = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED}.get(exc.status_code, "http_error")
    return APIError(code, exc.detail, status=exc.status_code, headers=dict(exc.headers or {})).response(
        request.url.path
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None)
    log.exception("unhandled error on %s %s (request id %s)", request.method, request.url.path, request_id)
    return internal_error(request_id).response(request.url.path)


def _routes() -> list[BaseRoute]:
    """The API dialects' routes (gateway/dialects/), then the server's own."""
    return [
        *dialects.routes(),
        *(Route(f"{base}/models", list_models, methods=["GET"]) for base in BASE_PATHS),
        Route("/api/v1/models/memory/usage", memory_usage, methods=["GET"]),
        Route("/api/v1/models/pull", pulls.pull_model, methods=["POST"]),
        Route("/api/v1/models/pulls", pulls.list_pulls, methods=["GET"]),
        Route("/api/v1/models/pulls/{pull_id:str}", pulls.cancel_pull, methods=["DELETE"]),
        Route("/api/v1/aliases", aliases.list_aliases, methods=["GET"]),
        Route("/api/v1/aliases", aliases.add_alias, methods=["POST"]),
        Route("/api/v1/aliases/{alias:path}", aliases.remove_alias, methods=["DELETE"]),
        Route("/api/v1/models/{model_id:str}/load", load_model, methods=["POST"]),
        Route("/api/v1/models/{model_id:str}/unload", unload_model, methods=["POST"]),
        Route("/api/v1/sessions", create_session, methods=["POST"]),
        Route("/api/v1/sessions", list_sessions, methods=["GET"]),
        Route("/api/v1/sessions/{session_id:str}", get_session, methods=["GET"]),
        Route("/api/v1/sessions/{session_id:str}", delete_session, methods=["DELETE"]),
        Route("/api/v1/sessions/{session_id:str}/messages", session_messages, methods=["GET"]),
        Route("/api/v1/auth/token", issue_token, methods=["POST"]),
        Route("/api/v1/health", health, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/api/v1/health/ready", ready, methods=["GET"]),
        Route("/metrics", metrics.metrics, methods=["GET"]),
        Route("/system/stats", system.system_stats, methods=["GET"]),
        Route("/api/v1/system/stats", system.system_stats, methods=["GET"]),
        Route("/api/activity-logs", list_activity, methods=["GET"]),
        Route("/api/activity-logs", clear_activity, methods=["DELETE"]),
        *openapi.ROUTES,
        Route("/", _dashboard, methods=["GET"]),
        Mount("/dashboard", StaticFiles(directory=DASHBOARD), name="dashboard"),
    ]


# The requests that reach a worker: every dialect's POSTs but the Files and Batch APIs' (a batch's lines are
# bounded by gateway.batches.max_in_flight instead).
_GENERATION_PATHS = frozenset(
    route.path
    for dialect in dialects.DIALECTS
    if dialect.name != "openai-batch"
    for route in dialect.routes
    if "POST" in getattr(route, "methods", ())
)


def _generates(method: str, path: str) -> bool:
    return method == "POST" and path in _GENERATION_PATHS


async def _dashboard(request: Request) -> FileResponse:
    return FileResponse(DASHBOARD / "index.html", headers={"Cache-Control": "no-cache"})


def create_app(settings: GatewaySettings | None = None, config: GatewayConfig | None = None) -> Starlette:
    """The application; raises RefusedToStart for a configuration it must not serve (bad keys, or no keys on
    an address other than loopback)."""
    settings = settings or GatewaySettings.from_env()
    try:
        config = config or load_gateway_config(settings.config_path)
        keyring = KeyRing(config, os.environ)
        tokens = TokenIssuer(settings.jwt_secret, config.transport.token_ttl_seconds, keyring)
        own_keys, host_keys = fleet_keys(config, os.environ)
        authenticator = Authenticator(keyring, tokens)
        metrics_keys = MetricsKeys(config.transport.metrics_key, os.environ, authenticator)
    except ValueError as exc:
        raise RefusedToStart(str(exc)) from None
    if keyring.keyless:
        if not is_loopback(settings.host):
            raise RefusedToStart(
                f"no API keys are configured: refusing to serve on {settings.host}, which is not a loopback "
                "address (give services keys in the config or API_KEYS, or bind HOST=127.0.0.1)"
            )
        log.warning(
            "no API keys configured: development mode without authentication, on loopback only "
            "(every request acts as the admin service 'local')"
        )
    else:
        log.info("API keys configured for services: %s", ", ".join(sorted(config.services)))
    limiter = RateLimiter(settings.redis_url)
    transport = config.transport
    activity = ActivityLog(settings.activity_log_size)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        ctx = zmq.asyncio.Context()
        app.state.settings = settings
        app.state.config = config
        app.state.tokens = tokens
        app.state.authenticator = authenticator  # public paths say more to an admin (readiness, /metrics)
        app.state.metrics_keys = metrics_keys
        app.state.limiter = limiter
        app.state.sessions = make_session_store(
            settings.redis_url, transport.sessions.ttl_seconds, transport.sessions.max_per_service
        )
        app.state.responses = make_response_store(settings.redis_url, transport.responses.ttl_seconds)
        app.state.services = keyring.services  # by name: a batch resumed after a restart runs as its service
        # The supervisors: this machine's, or a fleet's hosts (hosts.links[i].client is one's ctl client).
        app.state.hosts = Hosts(ctx, config, settings, own_keys, host_keys)
        app.state.workers = WorkerPool(ctx, app.state.hosts, settings)
        # Observers every generation feeds, app-wide (each request adds its own telemetry record: core/http.py).
        app.state.core = GenerationCore(app.state.workers, settings, observers=[limiter.token_charger])
        app.state.activity = activity
        app.state.files = FileStore(settings.data_dir)
        app.state.batch_store = make_batch_store(settings.redis_url, settings.data_dir)
        app.state.batches = Batches(app.state, app.state.batch_store, app.state.files, transport.batches.max_in_flight)
        app.state.batches.start()
        system.prime()
        await sse.prime()
        log.info(
            "gateway on %s://%s:%d, %s at %s; sessions and rate limits in %s",
            "https" if settings.tls_certfile or transport.tls.certfile else "http",
            settings.host,
            settings.port,
            "hosts" if config.hosts else "supervisor",
            ", ".join(f"{h.name} {h.endpoint}" for h in config.hosts) or settings.supervisor_endpoint,
            "Redis" if settings.redis_url else "memory",
        )
        try:
            yield
        finally:
            await app.state.batches.close()  # first: their lines are aborted while the workers' sockets are open
            await app.state.batch_store.close()
            app.state.workers.close()
            app.state.hosts.close()
            ctx.term()
            await app.state.sessions.close()
            await app.state.responses.close()
            await limiter.close()
            metrics.process_exited()

    middleware = [
        Middleware(RequestContext),  # outermost: every log line below carries the request id
        Middleware(Telemetry, activity=activity),  # times and counts every answer, 401s and 429s too
        Middleware(TrustedHosts, hosts=transport.trusted_hosts),
    ]
    if keyring.keyless:
        middleware.append(Middleware(BrowserGuard))  # loopback Host headers and JSON POSTs only
    if transport.cors_origins:
        middleware.append(
            Middleware(
                JSONCORSMiddleware,
                allow_origins=transport.cors_origins,
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=CORS_HEADERS,
                expose_headers=CORS_EXPOSED,
            )
        )
    middleware += [
        Middleware(BodyLimit, max_bytes=transport.max_body_bytes),
        Middleware(Auth, authenticator=authenticator, limiter=limiter),
        Middleware(Admission, admits=_generates, limits=(transport.max_in_flight, transport.max_queued)),
    ]
    return Starlette(
        routes=_routes(),
        lifespan=lifespan,
        middleware=middleware,
        exception_handlers={
            APIError: _api_error,
            ClientGone: _client_gone,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
    )

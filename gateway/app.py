"""The Starlette application: routes, error handlers, and the ZeroMQ clients it holds for its lifetime."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import zmq.asyncio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from gateway import metrics
from gateway.activity import ActivityLog, clear_activity, list_activity
from gateway.errors import APIError
from gateway.routes import system
from gateway.routes.admin import load_model, memory_usage, unload_model
from gateway.routes.chat import chat_completions
from gateway.routes.completions import completions
from gateway.routes.embeddings import embeddings
from gateway.routes.health import health, ready
from gateway.routes.messages import count_tokens, messages
from gateway.routes.models import list_models
from gateway.routes.rerank import rerank
from gateway.settings import GatewaySettings
from gateway.streaming import ClientGone
from gateway.supervisor_client import SupervisorClient
from gateway.telemetry import Telemetry
from gateway.worker_client import WorkerPool
from protocol import ErrorCode

log = logging.getLogger("gateway")
DASHBOARD = Path(__file__).parent / "dashboard"  # plain static files: no build step


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return exc.response(request.url.path)


async def _client_gone(request: Request, exc: ClientGone) -> Response:
    return Response(status_code=499)  # nobody is listening any more; its generation has been aborted


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    code = "not_found" if exc.status_code == 404 else "method_not_allowed" if exc.status_code == 405 else "http_error"
    error = APIError(code, exc.detail, status=exc.status_code)
    error.type = "invalid_request_error"
    return JSONResponse(error.body_for(request.url.path), status_code=exc.status_code)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return APIError(ErrorCode.INTERNAL, "Internal server error").response(request.url.path)


def _routes() -> list[Route]:
    routes = []
    for prefix in ("/v1", "/api/v1"):
        routes += [
            Route(f"{prefix}/chat/completions", chat_completions, methods=["POST"]),
            Route(f"{prefix}/completions", completions, methods=["POST"]),
            Route(f"{prefix}/models", list_models, methods=["GET"]),
            Route(f"{prefix}/embeddings", embeddings, methods=["POST"]),
            Route(f"{prefix}/rerank", rerank, methods=["POST"]),
        ]
    for prefix in ("/v1", "/anthropic/v1"):  # Anthropic's SDK and Claude Code take either base URL
        routes += [
            Route(f"{prefix}/messages", messages, methods=["POST"]),
            Route(f"{prefix}/messages/count_tokens", count_tokens, methods=["POST"]),
        ]
    routes += [
        Route("/api/v1/models/memory/usage", memory_usage, methods=["GET"]),
        Route("/api/v1/models/{model_id:str}/load", load_model, methods=["POST"]),
        Route("/api/v1/models/{model_id:str}/unload", unload_model, methods=["POST"]),
        Route("/api/v1/health", health, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/api/v1/health/ready", ready, methods=["GET"]),
        Route("/metrics", metrics.metrics, methods=["GET"]),
        Route("/system/stats", system.system_stats, methods=["GET"]),
        Route("/api/v1/system/stats", system.system_stats, methods=["GET"]),
        Route("/api/activity-logs", list_activity, methods=["GET"]),
        Route("/api/activity-logs", clear_activity, methods=["DELETE"]),
        Route("/", _dashboard, methods=["GET"]),
        Mount("/dashboard", StaticFiles(directory=DASHBOARD), name="dashboard"),
    ]
    return routes


async def _dashboard(request: Request) -> FileResponse:
    return FileResponse(DASHBOARD / "index.html", headers={"Cache-Control": "no-cache"})


def create_app(settings: GatewaySettings | None = None) -> Starlette:
    settings = settings or GatewaySettings.from_env()
    activity = ActivityLog(settings.activity_log_size)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        ctx = zmq.asyncio.Context()
        app.state.settings = settings
        app.state.supervisor = SupervisorClient(ctx, settings.supervisor_endpoint)
        app.state.workers = WorkerPool(ctx, app.state.supervisor, settings)
        app.state.activity = activity
        system.prime()
        log.info(
            "gateway on http://%s:%d, supervisor at %s", settings.host, settings.port, settings.supervisor_endpoint
        )
        try:
            yield
        finally:
            app.state.workers.close()
            app.state.supervisor.close()
            ctx.term()
            metrics.process_exited()

    return Starlette(
        routes=_routes(),
        lifespan=lifespan,
        middleware=[Middleware(Telemetry, activity=activity)],  # outermost of ours: times auth failures too
        exception_handlers={
            APIError: _api_error,
            ClientGone: _client_gone,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
    )

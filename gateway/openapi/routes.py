"""GET /openapi.json (the document, built once per app from its routes) and GET /docs (a static page, no CDN,
that fetches and renders it)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Route

from gateway.openapi.document import build

PAGE = Path(__file__).parent / "docs.html"


def _version() -> str:
    try:
        return version("mlx-llm-server")
    except PackageNotFoundError:
        return "0"


async def openapi_json(request: Request) -> JSONResponse:
    """This document: every route of the server, its request body's schema, and its errors."""
    app = request.app
    document = getattr(app.state, "openapi", None)
    if document is None:
        document = app.state.openapi = build(app.routes, _version())
    return JSONResponse(document)


async def docs(request: Request) -> FileResponse:
    """A page that renders /openapi.json."""
    return FileResponse(PAGE, headers={"Cache-Control": "no-cache"})


ROUTES = [Route("/openapi.json", openapi_json, methods=["GET"]), Route("/docs", docs, methods=["GET"])]

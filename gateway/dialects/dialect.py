"""What the app knows of an API dialect: its routes, and the shape of its errors on the paths it owns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from starlette.routing import BaseRoute, Route

from gateway.errors import ErrorShape, openai_error_body

BASE_PATHS = ("/v1", "/api/v1")  # the base URLs clients of the OpenAI-style APIs use


def post(path: str, handler, bases: Sequence[str] = BASE_PATHS) -> list[Route]:
    """`POST <base><path>` for each base URL."""
    return [Route(f"{base}{path}", handler, methods=["POST"]) for base in bases]


@dataclass(frozen=True)
class Dialect:
    name: str
    routes: Sequence[BaseRoute]
    error_shape: ErrorShape = openai_error_body
    # Paths whose errors take `error_shape`, the middleware's (401, 413, 429, ...) and 404s too: exact paths,
    # and prefixes ending in "/" for every path below them. Empty: the paths of its routes.
    error_scope: tuple[str, ...] = ()

    def owns(self, path: str) -> bool:
        scope = self.error_scope or tuple(route.path for route in self.routes)
        return any(path == p or (p.endswith("/") and path.startswith(p)) for p in scope)

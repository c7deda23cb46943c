"""TrustedHosts: a request whose Host header is outside the configured list gets 400 `invalid_host`
("*" allows any host, "*.example.com" its subdomains)."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import APIError
from protocol import ErrorCode


class TrustedHosts:
    def __init__(self, app: ASGIApp, hosts: list[str]):
        self.app = app
        self.any = "*" in hosts
        self.exact = {h.lower() for h in hosts if not h.startswith("*.")}
        self.suffixes = tuple(h[1:].lower() for h in hosts if h.startswith("*."))

    def allowed(self, host: str) -> bool:
        if self.any:
            return True
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host  # drop a port, keep [v6] literals
        name = name.lower()
        return name in self.exact or (bool(self.suffixes) and name.endswith(self.suffixes))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.allowed(Headers(scope=scope).get("host", "")):
            return await self.app(scope, receive, send)
        error = APIError(ErrorCode.INVALID_HOST, "Invalid Host header")
        await error.response(scope["path"])(scope, receive, send)

"""Auth: the caller's service on `request.state.service` (401 without a valid key or token; gateway/auth.py
decides who is calling), then its rate limits (429), whose headers every response carries."""

from __future__ import annotations

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import APIError

# Probes, the Prometheus scrape and the dashboard's own files need no key (the dashboard sends the key it is
# given with every API call it makes).
PUBLIC_PATHS = frozenset({"/health", "/api/v1/health", "/api/v1/health/ready", "/metrics", "/"})
PUBLIC_PATHS |= {"/openapi.json", "/docs"}  # the API's description (gateway/openapi/)
PUBLIC_PREFIXES = ("/dashboard/",)


class Auth:
    """Authenticates every request outside PUBLIC_PATHS, then counts it against the service's rate limits."""

    def __init__(self, app: ASGIApp, authenticator, limiter):
        self.app = app
        self.authenticator = authenticator
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")  # a lifespan scope has none
        if scope["type"] != "http" or path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            return await self.app(scope, receive, send)
        try:
            service, digest = self.authenticator.authenticate(Headers(scope=scope))
            state = scope.setdefault("state", {})
            state["service"] = service
            state["key_digest"] = digest
            headers = await self.limiter.admit(service)
        except APIError as exc:
            return await exc.response(scope["path"])(scope, receive, send)

        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start" and headers:
                response_headers = MutableHeaders(scope=message)
                for name, value in headers.items():
                    response_headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_limits)

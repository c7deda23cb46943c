"""The gateway's ASGI middleware, outermost first:

RequestContext   X-Request-ID accepted (if well-formed) or generated, returned, and set for every log line
(Telemetry       times every answer: metrics, activity log, the access-log line; see gateway/telemetry.py)
TrustedHosts     a Host header outside the configured list gets 400
CORS             browser origins from the config's allowlist (none: no CORS headers)
BodyLimit        request bodies over the limit get 413, whether announced by Content-Length or not
Auth             the caller's service on `request.state.service` (401 without a valid key or token), then its
                 rate limits (429), whose headers every response carries

Errors raised here never reach the app's exception handlers, so each one answers in the API's error shape itself.
"""

from __future__ import annotations

import re
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import APIError
from gateway.logs import request_id_var
from protocol import ErrorCode

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
# Probes, the Prometheus scrape and the dashboard's own files need no key (the dashboard sends the key it is
# given with every API call it makes).
PUBLIC_PATHS = frozenset({"/health", "/api/v1/health", "/api/v1/health/ready", "/metrics", "/"})
PUBLIC_PREFIXES = ("/dashboard/",)


def _state(scope: Scope) -> dict:
    return scope.setdefault("state", {})


class RequestContext:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = Headers(scope=scope).get("x-request-id", "")
        # A malformed id is replaced, not echoed: it would end up in log lines and response headers.
        request_id = given if REQUEST_ID.match(given) else f"req_{uuid.uuid4().hex}"
        _state(scope)["request_id"] = request_id
        token = request_id_var.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["x-request-id"] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


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


class JSONCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, with a refused preflight answered in the API's error shape."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope) if scope["type"] == "http" else None
        preflight = (
            headers is not None
            and scope["method"] == "OPTIONS"
            and "origin" in headers
            and "access-control-request-method" in headers
        )
        if not preflight:
            return await super().__call__(scope, receive, send)
        response = self.preflight_response(request_headers=headers)
        if response.status_code == 400:
            kept = {k: v for k, v in response.headers.items() if k.lower().startswith(("access-control", "vary"))}
            error = APIError(ErrorCode.INVALID_REQUEST, response.body.decode(), headers=kept)
            response = error.response(scope["path"])
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _error(self) -> APIError:
        return APIError(ErrorCode.REQUEST_TOO_LARGE, f"The request body is larger than {self.max_bytes} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = Headers(scope=scope).get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._error().response(scope["path"])(scope, receive, send)
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if started:
                raise
            await self._error().response(scope["path"])(scope, receive, send)


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
            state = _state(scope)
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

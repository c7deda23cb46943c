"""JSONCORSMiddleware: browser origins from the config's allowlist (none configured: no CORS headers at all)."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Receive, Scope, Send

from gateway.errors import APIError
from protocol import ErrorCode


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

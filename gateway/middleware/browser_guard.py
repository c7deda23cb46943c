"""BrowserGuard: keyless development mode cannot be driven from a web page.

Without keys every request acts as the admin service, so any page the developer visits could call the API:
a cross-site form or `fetch(..., {mode: "no-cors"})` POST (the browser sends it without asking), or a page whose
name is re-pointed at 127.0.0.1 (DNS rebinding: the browser then calls it same-origin). Two checks close both:
- the Host header must name a loopback address (localhost, 127.0.0.1, [::1], any port): a rebound page sends
  its own name, which is refused with 403 `invalid_host`;
- a POST must carry `Content-Type: application/json`, which a browser sends cross-site only after a CORS
  preflight that this server does not grant (415 otherwise). The upload routes take multipart/form-data as
  well, since that is their format.
Every SDK and `curl -H 'Content-Type: application/json'` already does both. With keys configured this
middleware is not installed: a page cannot attach the key.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.dialects.dialect import BASE_PATHS
from gateway.errors import APIError
from protocol import ErrorCode

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})
# Routes whose body is a multipart upload (audio to transcribe, a batch's input file).
UPLOAD_PATHS = frozenset(
    f"{base}{path}" for base in BASE_PATHS for path in ("/audio/transcriptions", "/audio/translations", "/files")
)


def host_name(host: str) -> str:
    """The name in a Host header, without its port ([v6] literals keep their brackets)."""
    name = host.strip().lower()
    if name.startswith("["):
        return name.partition("]")[0] + "]"
    return name.partition(":")[0]


def media_type(content_type: str) -> str:
    return content_type.partition(";")[0].strip().lower()


class BrowserGuard:
    def __init__(self, app: ASGIApp):
        self.app = app

    def refusal(self, scope: Scope) -> APIError | None:
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if host_name(host) not in LOOPBACK_NAMES:
            return APIError(
                ErrorCode.INVALID_HOST,
                "Development mode (no API keys) answers only requests addressed to localhost, 127.0.0.1 or [::1]",
                status=403,
                type_="permission_error",
            )
        if scope["method"] != "POST":
            return None
        given = media_type(headers.get("content-type", ""))
        accepted = (
            ("application/json", "multipart/form-data") if scope["path"] in UPLOAD_PATHS else ("application/json",)
        )
        if given in accepted:
            return None
        return APIError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            f"Send the request body as {' or '.join(accepted)} (Content-Type: {given or 'none'} was sent); "
            "in development mode this keeps web pages from calling the API",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        error = self.refusal(scope)
        if error is None:
            return await self.app(scope, receive, send)
        await error.response(scope["path"])(scope, receive, send)

"""POST /api/v1/auth/token: exchange a service key for a short-lived signed token (a JWT) that works as a
Bearer credential with the same rights. Body (optional): {"expires_in": seconds}, at most the configured
lifetime. Needs JWT_SECRET; a token cannot be exchanged for another one."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.auth import LOCAL
from gateway.errors import APIError
from gateway.request_body import decode_request
from protocol import ErrorCode


class TokenRequest(msgspec.Struct, kw_only=True):
    expires_in: Annotated[int, Meta(ge=1)] | None = None


async def issue_token(request: Request) -> JSONResponse:
    state = request.app.state
    tokens = state.tokens
    if not tokens.enabled:
        raise APIError(ErrorCode.NOT_FOUND, "Tokens are not enabled on this server (JWT_SECRET is not set)")
    body = await request.body()
    req = decode_request(body, TokenRequest) if body.strip() else TokenRequest()
    service = request.state.service
    digest = request.state.key_digest
    if digest is None and service is not LOCAL:
        raise APIError(ErrorCode.INVALID_API_KEY, "A token cannot be exchanged for another; use the service key")
    token, ttl = tokens.issue(service, digest or b"", req.expires_in)
    return JSONResponse({"access_token": token, "token_type": "bearer", "expires_in": ttl, "service": service.name})

"""Conversation sessions of the calling service (seed 000's ChukSessions paths):

POST   /api/v1/sessions                  create one: {"metadata": {...}, "messages": [...]} (both optional)
GET    /api/v1/sessions                  the caller's live sessions, most recently used first
GET    /api/v1/sessions/{id}             one session
GET    /api/v1/sessions/{id}/messages    its conversation
DELETE /api/v1/sessions/{id}             delete it

A chat completion with `session_id` continues the conversation (gateway/dialects/chat/session_turn.py).
Another service's session answers 404 exactly like one that never existed.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.dialects.chat.schema import ChatMessageIn, ImageURLPart
from gateway.dialects.chat.session_messages import stored
from gateway.dialects.chat.translate import chat_message
from gateway.errors import APIError
from gateway.request_body import decode_request
from gateway.sessions import SessionStore, not_found, using_store
from protocol import ErrorCode

MAX_METADATA_BYTES = 16 * 1024


class CreateSession(msgspec.Struct, kw_only=True):
    metadata: dict[str, str | int | float | bool | None] = {}
    messages: Annotated[list[ChatMessageIn], Meta(max_length=1000)] = []


def store_of(request: Request) -> SessionStore:
    return request.app.state.sessions


def service_name(request: Request) -> str:
    return request.state.service.name


async def create_session(request: Request) -> JSONResponse:
    body = await request.body()
    req = decode_request(body, CreateSession) if body.strip() else CreateSession()
    if len(msgspec.json.encode(req.metadata)) > MAX_METADATA_BYTES:
        raise APIError(ErrorCode.INVALID_REQUEST, f"metadata is larger than {MAX_METADATA_BYTES} bytes", "metadata")
    for i, m in enumerate(req.messages):
        if isinstance(m.content, list) and any(isinstance(part, ImageURLPart) for part in m.content):
            raise APIError(ErrorCode.INVALID_REQUEST, "A session stores text only", param=f"messages[{i}].content")
    messages = [stored(chat_message(m)) for m in req.messages]
    info = await using_store(store_of(request).create(service_name(request), req.metadata, messages))
    return JSONResponse(info.to_json(), status_code=201)


async def list_sessions(request: Request) -> JSONResponse:
    sessions = await using_store(store_of(request).list(service_name(request)))
    return JSONResponse({"object": "list", "data": [s.to_json() for s in sessions]})


async def get_session(request: Request) -> JSONResponse:
    session_id = request.path_params["session_id"]
    info = await using_store(store_of(request).get(service_name(request), session_id))
    if info is None:
        raise not_found(session_id)
    return JSONResponse(info.to_json())


async def session_messages(request: Request) -> JSONResponse:
    session_id = request.path_params["session_id"]
    messages = await using_store(store_of(request).messages(service_name(request), session_id))
    if messages is None:
        raise not_found(session_id)
    return JSONResponse({"object": "list", "session_id": session_id, "data": messages})


async def delete_session(request: Request) -> JSONResponse:
    session_id = request.path_params["session_id"]
    if not await using_store(store_of(request).delete(service_name(request), session_id)):
        raise not_found(session_id)
    return JSONResponse({"id": session_id, "object": "session.deleted", "deleted": True})

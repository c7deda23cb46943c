"""POST /v1/chat/completions (also /api/v1/chat/completions): the chat dialect's handler and routes."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.core import http as core
from gateway.core.caller import Caller
from gateway.dialects.chat.render import chunks, completion
from gateway.dialects.chat.schema import ChatCompletionRequest
from gateway.dialects.chat.session_turn import SessionTurn
from gateway.dialects.chat.translate import asked_of, images_of, to_generate_request, validate
from gateway.dialects.dialect import Dialect, post
from gateway.dialects.openai_common import (
    OPENAI_WIRE,
    SYSTEM_FINGERPRINT,
    include_usage,
    reasoning_keys,
    whole_only,
)
from gateway.errors import APIError
from gateway.request_body import decode_request
from protocol import ErrorCode
from protocol.generation import GenerateRequest


def _base(gen: GenerateRequest) -> dict:
    return {"id": gen.request_id, "created": int(time.time()), "system_fingerprint": SYSTEM_FINGERPRINT}


async def chat_completions(request: Request) -> Response:
    req = decode_request(await request.body(), ChatCompletionRequest)
    validate(req)  # before reading a session: a bad request is a 400 whatever the store's state
    turn = await SessionTurn.begin(request, req)
    gen = turn.translate(req, await images_of(req, request.app.state.settings))
    base = _base(gen)
    keys = reasoning_keys(getattr(request.state, "service", None))
    if req.stream:

        def render(generation):
            body = base | {"model": generation.model_id}
            return chunks(turn.around(generation), body, include_usage(req.stream_options), keys)

        return await core.stream(request, gen, req.model or "", render, OPENAI_WIRE, asked_of(req))
    answer = await core.answer(request, gen, req.model or "", asked_of(req))
    await turn.complete(answer.text, answer.reasoning, answer.tool_calls)
    return JSONResponse(completion(answer, base, req.logprobs, keys))


async def batch_line(state, caller: Caller, body: bytes) -> dict:
    """One line of a batch (`state`: the app's): the whole answer, as the handler gives it, without a session."""
    req = decode_request(body, ChatCompletionRequest)
    whole_only(req.stream)
    if req.session_id is not None:
        raise APIError(ErrorCode.INVALID_REQUEST, "A batch line cannot continue a session", param="session_id")
    gen = to_generate_request(req, await images_of(req, state.settings))
    answer = await state.core.answer(caller, gen, req.model or "", asked_of(req))
    return completion(answer, _base(gen), req.logprobs, reasoning_keys(caller.service))


DIALECT = Dialect(
    name="openai-chat",
    routes=post("/chat/completions", chat_completions),
)

"""POST /v1/messages and /anthropic/v1/messages (Anthropic Messages, streaming or not), and
POST .../messages/count_tokens: the Anthropic dialect's handlers and routes."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.core import http as core
from gateway.dialects.anthropic.render import ANTHROPIC_WIRE, error_body, events, message
from gateway.dialects.anthropic.schema import CountTokensRequest, MessagesRequest
from gateway.dialects.anthropic.translate import asked_of, to_generate_request
from gateway.dialects.dialect import Dialect, post
from gateway.request_body import decode_request

BASES = ("/v1", "/anthropic/v1")  # Anthropic's SDK and Claude Code take either base URL


async def messages(request: Request) -> Response:
    req = decode_request(await request.body(), MessagesRequest)
    gen = to_generate_request(req, request.app.state.settings)
    start = {"id": gen.request_id, "type": "message", "role": "assistant"}
    if req.stream:

        def render(generation):
            return events(generation, start | {"model": generation.model_id})

        return await core.stream(request, gen, req.model, render, ANTHROPIC_WIRE, asked_of(req))
    return JSONResponse(message(await core.answer(request, gen, req.model, asked_of(req)), start))


async def count_tokens(request: Request) -> Response:
    req = decode_request(await request.body(), CountTokensRequest)
    gen = to_generate_request(req, request.app.state.settings)
    generation = await core.start(request, gen, req.model, asked_of(req))
    generation.release()
    return JSONResponse({"input_tokens": generation.first.usage.prompt_tokens})


DIALECT = Dialect(
    name="anthropic-messages",
    routes=post("/messages", messages, BASES) + post("/messages/count_tokens", count_tokens, BASES),
    error_shape=error_body,
    # Everything under its paths, unknown ones too: an Anthropic client reads every error in its own shape.
    error_scope=("/v1/messages", "/v1/messages/", "/anthropic/"),
)


def is_anthropic_path(path: str) -> bool:
    """The Anthropic Messages API's paths (/v1/messages, /v1/messages/count_tokens, /anthropic/...)."""
    return DIALECT.owns(path)

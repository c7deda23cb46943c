"""POST /v1/responses (also /api/v1/responses), GET and DELETE /v1/responses/{id}, GET /v1/responses/{id}/input_items:
the Responses dialect's handlers and routes. Errors are OpenAI's shape (gateway/errors.py's default)."""

from __future__ import annotations

import time

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.core import http as core
from gateway.core.caller import Caller
from gateway.core.http import StreamWire
from gateway.dialects.dialect import BASE_PATHS, Dialect, post
from gateway.dialects.openai_common import whole_only
from gateway.dialects.responses.render import ResponseBuilder
from gateway.dialects.responses.schema import MessageItem, NamedFunction, ResponsesRequest, decode_items
from gateway.dialects.responses.store import ResponseStore, not_found, using
from gateway.dialects.responses.translate import (
    asked_of,
    listed,
    new_id,
    to_generate_request,
    to_messages,
    validate,
)
from gateway.errors import APIError
from gateway.pagination import page
from gateway.request_body import decode_request
from protocol import ErrorCode
from protocol.generation import GenerateRequest


def _store(request: Request) -> tuple[ResponseStore, str]:
    """The response store and the calling service's name (every record belongs to one service)."""
    return request.app.state.responses, request.state.service.name


def _base(req: ResponsesRequest, response_id: str) -> dict:
    """The response's fields known before it starts."""
    choice = req.tool_choice or "auto"
    text = req.text.format if req.text else None
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "model": req.model or "",
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "metadata": req.metadata or {},
        "parallel_tool_calls": req.parallel_tool_calls,
        "previous_response_id": req.previous_response_id,
        "reasoning": {"effort": req.reasoning.effort if req.reasoning else None, "summary": None},
        "store": req.store,
        "temperature": req.temperature,
        "text": {"format": msgspec.to_builtins(text) if text else {"type": "text"}},
        "tool_choice": msgspec.to_builtins(choice) if isinstance(choice, NamedFunction) else choice,
        "tools": msgspec.to_builtins(req.tools or []),
        "top_p": req.top_p,
        "truncation": req.truncation,
        "usage": None,
        "user": req.user,
    }


class _Turn:
    """One response in the making: the worker's request, the builder of its answer, and its storing."""

    def __init__(self, state, service: str, req: ResponsesRequest):
        self.store: ResponseStore = state.responses
        self.service, self.req = service, req
        self.builder: ResponseBuilder | None = None

    async def prepare(self, settings) -> GenerateRequest:
        """The conversation (a previous response's first, from the store), as the worker's request."""
        req = self.req
        validate(req)
        new = decode_items(req.input) if isinstance(req.input, list) else [MessageItem(role="user", content=req.input)]
        self.context = listed(new)
        if req.previous_response_id is not None:
            found = await using(self.store.get(self.service, req.previous_response_id))
            if found is None:
                raise not_found(req.previous_response_id, "previous_response_id")
            previous, previous_input = found
            self.context = previous_input + previous["output"] + self.context
        messages = await to_messages(req.instructions, self.context, settings)
        if not any(m.role not in ("system", "developer") for m in messages):
            raise APIError(ErrorCode.INVALID_REQUEST, "The input holds no message for the model to answer", "input")
        response_id = new_id("resp")
        self.builder = ResponseBuilder(_base(req, response_id))
        return to_generate_request(req, response_id, messages)

    async def keep(self, final: dict) -> None:
        """The response is complete: stored whole, with its input (unless `store` is false)."""
        if self.req.store:
            await using(self.store.put(self.service, final, self.context))

    async def whole(self, answer) -> dict:
        self.builder.base["model"] = answer.model_id
        final = self.builder.whole(answer)
        await self.keep(final)
        return final


async def create(request: Request) -> Response:
    req = decode_request(await request.body(), ResponsesRequest)
    turn = _Turn(request.app.state, request.state.service.name, req)
    gen = await turn.prepare(request.app.state.settings)
    if req.stream:

        def render(generation):
            turn.builder.base["model"] = generation.model_id
            return turn.builder.events(generation, turn.keep)

        wire = StreamWire(error=turn.builder.fail)
        return await core.stream(request, gen, req.model or "", render, wire, asked_of(req))
    return JSONResponse(await turn.whole(await core.answer(request, gen, req.model or "", asked_of(req))))


async def batch_line(state, caller: Caller, body: bytes) -> dict:
    """One line of a batch (`state`: the app's): the whole response, stored as the handler stores it."""
    req = decode_request(body, ResponsesRequest)
    whole_only(req.stream)
    turn = _Turn(state, caller.service.name, req)
    gen = await turn.prepare(state.settings)
    return await turn.whole(await state.core.answer(caller, gen, req.model or "", asked_of(req)))


async def _found(request: Request) -> tuple[dict, list[dict]]:
    store, service = _store(request)
    response_id = request.path_params["response_id"]
    found = await using(store.get(service, response_id))
    if found is None:
        raise not_found(response_id)
    return found


async def retrieve(request: Request) -> Response:
    return JSONResponse((await _found(request))[0])


async def delete(request: Request) -> Response:
    store, service = _store(request)
    response_id = request.path_params["response_id"]
    if not await using(store.delete(service, response_id)):
        raise not_found(response_id)
    return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})


async def input_items(request: Request) -> Response:
    """The input a stored response was generated from, the conversation before it included: `limit` (1 to 100,
    default 20) items, newest first unless `order=asc`, after the item `after`."""
    _, items = await _found(request)
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise APIError(ErrorCode.INVALID_REQUEST, "order must be 'asc' or 'desc'", "order")
    return JSONResponse(page(items if order == "asc" else items[::-1], request.query_params))


DIALECT = Dialect(
    name="openai-responses",
    routes=post("/responses", create)
    + [
        Route(f"{base}{path}", handler, methods=[method])
        for base in BASE_PATHS
        for path, handler, method in (
            ("/responses/{response_id:str}", retrieve, "GET"),
            ("/responses/{response_id:str}", delete, "DELETE"),
            ("/responses/{response_id:str}/input_items", input_items, "GET"),
        )
    ],
)

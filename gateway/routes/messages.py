"""POST /v1/messages and /anthropic/v1/messages (Anthropic Messages, streaming or not), and
POST .../messages/count_tokens. Errors leave in Anthropic's shape (gateway/errors.py, keyed on the path)."""

from __future__ import annotations

import json

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.anthropic_schema import CountTokensRequest, MessagesRequest, to_generate_request
from gateway.core import http as core
from gateway.core.http import StreamWire
from gateway.errors import APIError
from gateway.openai_schema import decode_request
from protocol.generation import Finished, ToolCall

# finish_reason -> stop_reason
_STOP_REASON = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def _stop(event: Finished) -> dict:
    reason = "stop_sequence" if event.stop_sequence is not None else _STOP_REASON.get(event.finish_reason, "end_turn")
    return {"stop_reason": reason, "stop_sequence": event.stop_sequence}


def _usage(prompt_tokens: int, cached_tokens: int, output_tokens: int) -> dict:
    # Anthropic's input_tokens leaves out the tokens read from the cache: the prompt is their sum.
    return {
        "input_tokens": prompt_tokens - cached_tokens,
        "output_tokens": output_tokens,
        "cache_read_input_tokens": cached_tokens,
        "cache_creation_input_tokens": 0,
    }


def _final_usage(event: Finished) -> dict:
    u = event.usage
    return _usage(u.prompt_tokens, u.cached_tokens, u.completion_tokens)


def _input(call: ToolCall) -> dict:
    try:
        value = json.loads(call.arguments)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _tool_use(call: ToolCall) -> dict:
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": _input(call)}


async def messages(request: Request) -> Response:
    req = decode_request(await request.body(), MessagesRequest)
    gen = to_generate_request(req, request.app.state.settings)
    message = {"id": gen.request_id, "type": "message", "role": "assistant"}
    if req.stream:

        def render(generation):
            return _events(generation, message | {"model": generation.model_id})

        return await core.stream(request, gen, req.model, render, ANTHROPIC_WIRE)
    done = await core.answer(request, gen, req.model)
    calls = [_tool_use(c) for c in done.tool_calls]
    content = ([{"type": "text", "text": done.text}] if done.text or not calls else []) + calls
    body = message | {"model": done.model_id, "content": content} | _stop(done.end)
    return JSONResponse(body | {"usage": _final_usage(done.end)})


async def count_tokens(request: Request) -> Response:
    req = decode_request(await request.body(), CountTokensRequest)
    gen = to_generate_request(req, request.app.state.settings)
    generation = await core.start(request, gen, req.model)
    generation.release()
    return JSONResponse({"input_tokens": generation.first.usage.prompt_tokens})


def _event(kind: str, data: dict) -> bytes:
    return f"event: {kind}\ndata: ".encode() + msgspec.json.encode({"type": kind} | data) + b"\n\n"


def _error_event(exc: APIError) -> bytes:
    return _event("error", {"error": exc.body("/v1/messages")["error"]})


ANTHROPIC_WIRE = StreamWire(error=_error_event)


async def _events(generation, message: dict):
    """message_start, then per content block start / deltas / stop, then message_delta with usage and
    message_stop: the sequence the anthropic SDK assembles into a Message."""
    first = generation.first
    counts = first.usage if isinstance(first, Finished) else first
    usage = _usage(counts.prompt_tokens, counts.cached_tokens, 0)
    start = message | {"content": [], "stop_reason": None, "stop_sequence": None}
    yield _event("message_start", {"message": start | {"usage": usage}})
    yield _event("ping", {})
    index, text_open = 0, False
    async for event in generation:
        if isinstance(event, Finished):
            if text_open:
                yield _event("content_block_stop", {"index": index})
            yield _event("message_delta", {"delta": _stop(event), "usage": _final_usage(event)})
            yield _event("message_stop", {})
            return
        if event.text:
            if not text_open:
                yield _event("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}})
                text_open = True
            yield _event("content_block_delta", {"index": index, "delta": {"type": "text_delta", "text": event.text}})
        for call in event.tool_calls:
            if text_open:
                yield _event("content_block_stop", {"index": index})
                index, text_open = index + 1, False
            block = _tool_use(call) | {"input": {}}
            yield _event("content_block_start", {"index": index, "content_block": block})
            delta = {"type": "input_json_delta", "partial_json": json.dumps(_input(call))}
            yield _event("content_block_delta", {"index": index, "delta": delta})
            yield _event("content_block_stop", {"index": index})
            index += 1

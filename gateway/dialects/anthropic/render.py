"""Anthropic Messages answers: whole (a `message`), streamed (the `message_start` ... `message_stop` events), and
errors in Anthropic's shape, {"type": "error", "error": {"type", "message"}}."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator

from gateway.core.generation import Answer, Generation
from gateway.core.http import StreamWire
from gateway.errors import APIError
from gateway.sse import sse_event
from protocol.generation import Finished, ToolCall

# Anthropic's error types by HTTP status (https://docs.anthropic.com/en/api/errors).
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def error_body(error: APIError) -> dict:
    kind = _ERROR_TYPES.get(error.status, "api_error" if error.status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": error.message}}


# A late error is an `error` event holding the error body; keepalives are SSE comments.
ANTHROPIC_WIRE = StreamWire(error=lambda exc: sse_event("error", {"error": error_body(exc)["error"]}))

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


def _signature(thinking: str) -> str:
    # Anthropic signs thinking so it can verify what clients send back; this server never reads it back, so the
    # signature only identifies the text (clients store and return it as it is).
    return hashlib.sha256(thinking.encode()).hexdigest()


def _thinking(thinking: str) -> dict:
    return {"type": "thinking", "thinking": thinking, "signature": _signature(thinking)}


def message(answer: Answer, start: dict) -> dict:
    """The whole answer; `start` holds the id, type and role."""
    calls = [_tool_use(c) for c in answer.tool_calls]
    content = [_thinking(answer.reasoning)] if answer.reasoning else []
    content += ([{"type": "text", "text": answer.text}] if answer.text or not calls else []) + calls
    body = start | {"model": answer.model_id, "content": content} | _stop(answer.end)
    return body | {"usage": _final_usage(answer.end)}


async def events(generation: Generation, message: dict) -> AsyncIterator[bytes]:
    """message_start, then per content block (thinking, text, tool_use) start / deltas / stop, then message_delta
    with usage and message_stop: the sequence the anthropic SDK assembles into a Message."""
    first = generation.first
    counts = first.usage if isinstance(first, Finished) else first
    usage = _usage(counts.prompt_tokens, counts.cached_tokens, 0)
    start = message | {"content": [], "stop_reason": None, "stop_sequence": None}
    yield sse_event("message_start", {"message": start | {"usage": usage}})
    yield sse_event("ping", {})
    index, open_block, thought = 0, None, []

    def close():  # the open block's end (a thinking block's signature first)
        nonlocal index, open_block
        if open_block == "thinking":
            delta = {"type": "signature_delta", "signature": _signature("".join(thought))}
            yield sse_event("content_block_delta", {"index": index, "delta": delta})
            thought.clear()
        if open_block is not None:
            yield sse_event("content_block_stop", {"index": index})
            index, open_block = index + 1, None

    def delta(kind: str, text: str):
        nonlocal open_block
        if open_block != kind:
            yield from close()
            block = _thinking("") | {"signature": ""} if kind == "thinking" else {"type": "text", "text": ""}
            yield sse_event("content_block_start", {"index": index, "content_block": block})
            open_block = kind
        body = (
            {"type": "thinking_delta", "thinking": text} if kind == "thinking" else {"type": "text_delta", "text": text}
        )
        yield sse_event("content_block_delta", {"index": index, "delta": body})

    async for event in generation:
        if isinstance(event, Finished):
            for chunk in close():
                yield chunk
            yield sse_event("message_delta", {"delta": _stop(event), "usage": _final_usage(event)})
            yield sse_event("message_stop", {})
            return
        if event.reasoning:
            thought.append(event.reasoning)
            for chunk in delta("thinking", event.reasoning):
                yield chunk
        if event.text:
            for chunk in delta("text", event.text):
                yield chunk
        for call in event.tool_calls:
            for chunk in close():
                yield chunk
            block = _tool_use(call) | {"input": {}}
            yield sse_event("content_block_start", {"index": index, "content_block": block})
            delta_json = {"type": "input_json_delta", "partial_json": json.dumps(_input(call))}
            yield sse_event("content_block_delta", {"index": index, "delta": delta_json})
            yield sse_event("content_block_stop", {"index": index})
            index += 1

"""OpenAI's legacy Completions, POST /v1/completions (also /api/v1/completions): a raw prompt in, text out, streaming
or not. The request type, its translation to GenerateRequest, its rendering (whole, and `text_completion` SSE
events) and its routes. Errors are OpenAI's shape (gateway/errors.py's default).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from typing import Annotated

from msgspec import Meta
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.core import http as core
from gateway.core.caller import Caller
from gateway.core.generation import Answer
from gateway.dialects.bounds import Tokens
from gateway.dialects.dialect import Dialect, post
from gateway.dialects.openai_common import (
    DONE,
    OPENAI_WIRE,
    SYSTEM_FINGERPRINT,
    OpenAIRequest,
    asked,
    include_usage,
    usage,
    whole_only,
)
from gateway.errors import APIError
from gateway.request_body import decode_request
from gateway.sse import sse
from protocol import ErrorCode
from protocol.generation import Finished, GenerateRequest, SamplingDefaults, SamplingParams, TextChunk


class CompletionRequest(OpenAIRequest, kw_only=True):
    prompt: str | Annotated[list[str], Meta(min_length=1, max_length=1)]
    max_tokens: Tokens | None = None  # None: the model's default, else OpenAI's 16
    echo: bool = False


BUILTIN = SamplingDefaults(max_tokens=16)  # OpenAI's default for completions, where the config sets none


def to_generate_request(req: CompletionRequest) -> GenerateRequest:
    if req.n != 1:
        raise APIError(ErrorCode.INVALID_REQUEST, "Only n=1 is supported", param="n")
    prompt = req.prompt if isinstance(req.prompt, str) else req.prompt[0]
    if not prompt:
        raise APIError(ErrorCode.INVALID_REQUEST, "The prompt is empty", param="prompt")
    return GenerateRequest(
        request_id=f"cmpl-{uuid.uuid4().hex}",
        prompt=prompt,
        sampling=SamplingParams(seed=req.seed),  # the rest: asked(), then the model's defaults
    )


async def completions(request: Request) -> Response:
    req = decode_request(await request.body(), CompletionRequest)
    gen = to_generate_request(req)
    fields = asked(req, req.max_tokens, BUILTIN)
    echo = gen.prompt if req.echo else ""
    base = _base(gen)
    if req.stream:

        def render(generation):
            return _chunks(generation, base | {"model": generation.model_id}, echo, include_usage(req.stream_options))

        return await core.stream(request, gen, req.model or "", render, OPENAI_WIRE, fields)
    return JSONResponse(_whole(await core.answer(request, gen, req.model or "", fields), base, echo))


def _base(gen: GenerateRequest) -> dict:
    base = {"id": gen.request_id, "object": "text_completion", "created": int(time.time())}
    return base | {"system_fingerprint": SYSTEM_FINGERPRINT}


def _whole(done: Answer, base: dict, echo: str) -> dict:
    choice = {"index": 0, "text": echo + done.text, "logprobs": None, "finish_reason": done.end.finish_reason}
    return base | {"model": done.model_id, "choices": [choice], "usage": usage(done.end)}


async def batch_line(state, caller: Caller, body: bytes) -> dict:
    """One line of a batch (`state`: the app's): the whole answer, as the handler gives it."""
    req = decode_request(body, CompletionRequest)
    whole_only(req.stream)
    gen = to_generate_request(req)
    done = await state.core.answer(caller, gen, req.model or "", asked(req, req.max_tokens, BUILTIN))
    return _whole(done, _base(gen), gen.prompt if req.echo else "")


async def _chunks(
    events: AsyncIterable[TextChunk | Finished], base: dict, echo: str, include_usage: bool
) -> AsyncIterator[bytes]:
    def chunk(text: str, finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return sse(base | {"choices": [choice]} | ({"usage": None} if include_usage else {}))

    if echo:
        yield chunk(echo)
    async for event in events:
        if isinstance(event, Finished):
            yield chunk("", event.finish_reason)
            if include_usage:
                yield sse(base | {"choices": [], "usage": usage(event)})
            yield DONE
            return
        yield chunk(event.text)


DIALECT = Dialect(
    name="openai-completions",
    routes=post("/completions", completions),
)

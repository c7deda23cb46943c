"""POST /v1/completions (also /api/v1/completions): OpenAI's legacy Completions, a raw prompt in, text out."""

from __future__ import annotations

import time
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.core import http as core
from gateway.errors import APIError
from gateway.openai_schema import CompletionRequest, decode_request
from gateway.routes.chat import OPENAI_WIRE, SYSTEM_FINGERPRINT, usage
from gateway.sse import sse
from protocol import ErrorCode
from protocol.generation import Finished, GenerateRequest, SamplingParams


def to_generate_request(req: CompletionRequest) -> GenerateRequest:
    if req.n != 1:
        raise APIError(ErrorCode.INVALID_REQUEST, "Only n=1 is supported", param="n")
    prompt = req.prompt if isinstance(req.prompt, str) else req.prompt[0]
    if not prompt:
        raise APIError(ErrorCode.INVALID_REQUEST, "The prompt is empty", param="prompt")
    return GenerateRequest(
        request_id=f"cmpl-{uuid.uuid4().hex}",
        prompt=prompt,
        sampling=SamplingParams(
            temperature=req.temperature,
            top_p=req.top_p,
            max_tokens=req.max_tokens,
            stop=[req.stop] if isinstance(req.stop, str) else (req.stop or []),
            seed=req.seed,
            top_k=req.top_k,
            min_p=req.min_p,
            repetition_penalty=req.repetition_penalty,
        ),
    )


async def completions(request: Request) -> Response:
    req = decode_request(await request.body(), CompletionRequest)
    gen = to_generate_request(req)
    echo = gen.prompt if req.echo else ""
    base = {"id": gen.request_id, "object": "text_completion", "created": int(time.time())}
    base["system_fingerprint"] = SYSTEM_FINGERPRINT
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        def render(generation):
            return _chunks(generation, base | {"model": generation.model_id}, echo, include_usage)

        return await core.stream(request, gen, req.model or "", render, OPENAI_WIRE)
    done = await core.answer(request, gen, req.model or "")
    choice = {"index": 0, "text": echo + done.text, "logprobs": None, "finish_reason": done.end.finish_reason}
    return JSONResponse(base | {"model": done.model_id, "choices": [choice], "usage": usage(done.end)})


async def _chunks(events, base: dict, echo: str, include_usage: bool):
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
            yield b"data: [DONE]\n\n"
            return
        yield chunk(event.text)

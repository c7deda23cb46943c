"""POST /v1/chat/completions (also /api/v1/chat/completions): OpenAI Chat Completions, streaming or not."""

from __future__ import annotations

import time
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.errors import APIError
from gateway.generation import start_generation, stream_generation
from gateway.openai_schema import ChatCompletionRequest, decode_request, text_of
from gateway.routes.sessions import not_found, store_of, using_store
from gateway.streaming import sse, unless_disconnected
from protocol import ErrorCode
from protocol.generation import (
    ChatMessage,
    Finished,
    GenerateRequest,
    GenerationError,
    SamplingParams,
    TokenLogprob,
)

SYSTEM_FINGERPRINT = "mlx-llm-server"


def validate(req: ChatCompletionRequest) -> None:
    """What the schema cannot say."""
    if req.n != 1:
        raise APIError(ErrorCode.INVALID_REQUEST, "Only n=1 is supported", param="n")
    if req.top_logprobs is not None and not req.logprobs:
        raise APIError(ErrorCode.INVALID_REQUEST, "top_logprobs requires logprobs to be true", param="top_logprobs")


def to_generate_request(
    req: ChatCompletionRequest, history: list[dict] | None = None, trace_id: str | None = None
) -> GenerateRequest:
    """The worker's request: a session's stored `history` (if any) followed by the request's messages."""
    validate(req)
    stop = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
    stored = [ChatMessage(role=m["role"], content=m["content"]) for m in history or ()]
    return GenerateRequest(
        request_id=f"chatcmpl-{uuid.uuid4().hex}",
        messages=stored + [ChatMessage(role=m.role, content=text_of(m, i)) for i, m in enumerate(req.messages)],
        sampling=SamplingParams(
            temperature=req.temperature,
            top_p=req.top_p,
            max_tokens=req.max_completion_tokens or req.max_tokens,
            stop=stop,
            seed=req.seed,
            top_k=req.top_k,
            min_p=req.min_p,
            repetition_penalty=req.repetition_penalty,
            logprobs=req.logprobs,
            top_logprobs=req.top_logprobs or 0,
        ),
        trace_id=trace_id,
        trim_history=history is not None,
    )


def _usage(event: Finished) -> dict:
    u = event.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    }


def _logprobs(entries: list[TokenLogprob] | None) -> dict | None:
    """OpenAI's choice.logprobs: {"content": [{token, logprob, bytes, top_logprobs: [...]}, ...]}."""
    if entries is None:
        return None

    def entry(token: str, logprob: float) -> dict:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    return {
        "content": [
            entry(e.token, e.logprob) | {"top_logprobs": [entry(t.token, t.logprob) for t in e.top_logprobs]}
            for e in entries
        ]
    }


async def chat_completions(request: Request) -> Response:
    req = decode_request(await request.body(), ChatCompletionRequest)
    validate(req)  # before reading a session: a bad request is a 400 whatever the store's state
    service = getattr(request.state, "service", None)
    history = None
    if req.session_id is not None:
        history = await using_store(store_of(request).messages(service.name, req.session_id))
        if history is None:
            raise not_found(req.session_id)
    gen = to_generate_request(req, history, getattr(request.state, "request_id", None))
    new_messages = [{"role": m.role, "content": m.content} for m in gen.messages[len(history or ()) :]]

    async def finish(text: str, event: Finished) -> None:
        """The answer is complete: charge its tokens, and store the turn in the session atomically."""
        await request.app.state.limiter.charge_tokens(service, event.usage.total_tokens)
        if req.session_id is not None:
            turn = [*new_messages, {"role": "assistant", "content": text}]
            if await using_store(store_of(request).append(service.name, req.session_id, turn)) is None:
                raise not_found(req.session_id)  # deleted or expired while the answer was generated

    base = {"id": gen.request_id, "created": int(time.time()), "system_fingerprint": SYSTEM_FINGERPRINT}
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        def render(client, stream, first):
            return _chunks(stream, first, base | {"model": client.model_id}, include_usage, finish)

        return await stream_generation(request, gen, req.model or "", render)
    client, stream, first = await start_generation(request, gen, req.model or "")
    base["model"] = client.model_id
    try:
        last, text, entries = await unless_disconnected(request, _collect(stream, first))
    finally:
        client.release(stream)  # aborts the generation in the worker unless it finished
    if isinstance(last, GenerationError):
        raise APIError.from_event(last)
    await finish(text, last)
    message = {"role": "assistant", "content": text}
    logprobs = _logprobs(entries if req.logprobs else None)
    choice = {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": last.finish_reason}
    return JSONResponse(base | {"object": "chat.completion", "choices": [choice], "usage": _usage(last)})


async def _collect(stream, event) -> tuple[Finished | GenerationError, str, list[TokenLogprob]]:
    text, entries = [], []
    while not isinstance(event, Finished | GenerationError):
        text.append(event.text)
        entries.extend(event.logprobs or ())
        event = await stream.next()
    return event, "".join(text), entries


async def _chunks(stream, event, base: dict, include_usage: bool, finish):
    def chunk(delta: dict, finish_reason: str | None = None, logprobs: dict | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        body = base | {"object": "chat.completion.chunk", "choices": [choice]}
        if include_usage:
            body["usage"] = None
        return sse(body)

    yield chunk({"role": "assistant", "content": ""})
    text = []
    while True:
        if isinstance(event, GenerationError):
            yield sse(APIError.from_event(event).body())
            return
        if isinstance(event, Finished):
            try:
                await finish("".join(text), event)
            except APIError as exc:  # the answer was sent, but its turn could not be stored
                yield sse(exc.body())
                return
            yield chunk({}, event.finish_reason)
            if include_usage:
                yield sse(base | {"object": "chat.completion.chunk", "choices": [], "usage": _usage(event)})
            yield b"data: [DONE]\n\n"
            return
        text.append(event.text)
        yield chunk({"content": event.text}, logprobs=_logprobs(event.logprobs))
        event = await stream.next()

"""POST /v1/chat/completions (also /api/v1/chat/completions): OpenAI Chat Completions, streaming or not."""

from __future__ import annotations

import time
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.core import http as core
from gateway.core.http import StreamWire
from gateway.errors import APIError
from gateway.images import image_bytes
from gateway.openai_schema import (
    ChatCompletionRequest,
    ChatMessageIn,
    ImageURLPart,
    JSONObjectFormat,
    JSONSchemaFormat,
    NamedToolChoice,
    decode_request,
    text_of,
)
from gateway.routes.sessions import not_found, store_of, using_store
from gateway.sse import sse
from protocol import ErrorCode
from protocol.generation import (
    ChatMessage,
    Finished,
    GenerateRequest,
    SamplingParams,
    TokenLogprob,
    ToolCall,
    ToolChoice,
    ToolSpec,
)

SYSTEM_FINGERPRINT = "mlx-llm-server"


async def images_of(req: ChatCompletionRequest, settings) -> dict[int, list[bytes]]:
    """Each message's images (by message index), decoded and checked. Whether the model takes images is the
    worker's to say: a text model's worker answers a request with images with a clear 400."""
    images: dict[int, list[bytes]] = {}
    for i, message in enumerate(req.messages):
        for j, part in enumerate(message.content if isinstance(message.content, list) else ()):
            if isinstance(part, ImageURLPart):
                param = f"messages[{i}].content[{j}].image_url"
                images.setdefault(i, []).append(await image_bytes(part.image_url, settings, param))
    return images


def _message(m: ChatMessageIn, images: list[bytes]) -> ChatMessage:
    calls = [ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments) for c in m.tool_calls or ()]
    return ChatMessage(
        role=m.role,
        content=text_of(m),
        tool_calls=calls,
        tool_call_id=m.tool_call_id,
        name=m.name,
        images=images,
    )


def _tool_choice(req: ChatCompletionRequest, tools: list[ToolSpec]) -> ToolChoice:
    choice = req.tool_choice or "auto"
    if isinstance(choice, NamedToolChoice):
        if choice.function.name not in {t.name for t in tools}:
            raise APIError(
                ErrorCode.INVALID_REQUEST,
                f"tool_choice names the function '{choice.function.name}', which is not among the tools",
                param="tool_choice",
            )
        return ToolChoice(mode="required", name=choice.function.name)
    if choice == "required" and not tools:
        raise APIError(ErrorCode.INVALID_REQUEST, "tool_choice 'required' needs tools", param="tool_choice")
    return ToolChoice(mode=choice)


def json_schema_of(response_format) -> dict | None:
    """The schema constrained decoding enforces for an OpenAI response_format (None: free text)."""
    if isinstance(response_format, JSONObjectFormat):
        return {"type": "object"}
    if isinstance(response_format, JSONSchemaFormat):
        return response_format.json_schema.schema
    return None


def validate(req: ChatCompletionRequest) -> None:
    """What the schema cannot say."""
    if req.n != 1:
        raise APIError(ErrorCode.INVALID_REQUEST, "Only n=1 is supported", param="n")
    if req.top_logprobs is not None and not req.logprobs:
        raise APIError(ErrorCode.INVALID_REQUEST, "top_logprobs requires logprobs to be true", param="top_logprobs")


def to_generate_request(
    req: ChatCompletionRequest,
    images: dict[int, list[bytes]] | None = None,
    history: list[dict] | None = None,
) -> GenerateRequest:
    """The worker's request: a session's stored `history` (if any) followed by the request's messages."""
    validate(req)
    stop = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
    tools = [
        ToolSpec(name=t.function.name, description=t.function.description, parameters=t.function.parameters)
        for t in req.tools or ()
    ]
    tool_choice = _tool_choice(req, tools)
    json_schema = json_schema_of(req.response_format)
    if json_schema is not None and tool_choice.mode == "required":
        raise APIError(
            ErrorCode.INVALID_REQUEST,
            "response_format cannot be combined with a required tool call",
            param="tool_choice",
        )
    return GenerateRequest(
        request_id=f"chatcmpl-{uuid.uuid4().hex}",
        messages=[ChatMessage(role=m["role"], content=m["content"]) for m in history or ()]
        + [_message(m, (images or {}).get(i, [])) for i, m in enumerate(req.messages)],
        tools=tools,
        tool_choice=tool_choice,
        json_schema=json_schema,
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
        trim_history=history is not None,
    )


def usage(event: Finished) -> dict:
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
    images = await images_of(req, request.app.state.settings)
    if images and req.session_id is not None:
        raise APIError(ErrorCode.INVALID_REQUEST, "A session stores text only: send images without session_id")
    gen = to_generate_request(req, images, history)
    new_messages = [{"role": m.role, "content": m.content} for m in gen.messages[len(history or ()) :]]

    async def store_turn(text: str) -> None:
        """The answer is complete: the request's messages and the answer join the session, atomically."""
        if req.session_id is not None:
            turn = [*new_messages, {"role": "assistant", "content": text}]
            if await using_store(store_of(request).append(service.name, req.session_id, turn)) is None:
                raise not_found(req.session_id)  # deleted or expired while the answer was generated

    base = {"id": gen.request_id, "created": int(time.time()), "system_fingerprint": SYSTEM_FINGERPRINT}
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        def render(generation):
            return _chunks(_storing(generation, store_turn), base | {"model": generation.model_id}, include_usage)

        return await core.stream(request, gen, req.model or "", render, OPENAI_WIRE)
    done = await core.answer(request, gen, req.model or "")
    await store_turn(done.text)
    message = {"role": "assistant", "content": done.text or (None if done.tool_calls else "")}
    if done.tool_calls:
        message["tool_calls"] = [_tool_call(c) for c in done.tool_calls]
    logprobs = _logprobs(done.logprobs if req.logprobs else None)
    choice = {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": done.end.finish_reason}
    body = base | {"model": done.model_id, "object": "chat.completion", "choices": [choice]}
    return JSONResponse(body | {"usage": usage(done.end)})


OPENAI_WIRE = StreamWire(error=lambda exc: sse(exc.body()))


def _tool_call(call: ToolCall, index: int | None = None) -> dict:
    out = {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
    return out if index is None else {"index": index} | out


async def _storing(events, store_turn):
    """The events, storing the session's turn when the answer is complete (before its end is rendered)."""
    text = []
    async for event in events:
        if isinstance(event, Finished):
            await store_turn("".join(text))
        else:
            text.append(event.text)
        yield event


async def _chunks(events, base: dict, include_usage: bool):
    def chunk(delta: dict, finish_reason: str | None = None, logprobs: dict | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        body = base | {"object": "chat.completion.chunk", "choices": [choice]}
        if include_usage:
            body["usage"] = None
        return sse(body)

    yield chunk({"role": "assistant", "content": ""})
    calls = 0
    async for event in events:
        if isinstance(event, Finished):
            yield chunk({}, event.finish_reason)
            if include_usage:
                yield sse(base | {"object": "chat.completion.chunk", "choices": [], "usage": usage(event)})
            yield b"data: [DONE]\n\n"
            return
        if event.text or not event.tool_calls:
            yield chunk({"content": event.text}, logprobs=_logprobs(event.logprobs))
        if event.tool_calls:
            yield chunk({"tool_calls": [_tool_call(c, calls + i) for i, c in enumerate(event.tool_calls)]})
            calls += len(event.tool_calls)

"""OpenAI Chat Completions -> the worker's GenerateRequest: messages (with their images, and a session's stored
history first), tools and tool_choice, response_format (enforced by constrained decoding); and the sampling
fields it set itself (`asked_of`: the core fills the others from the model's defaults and the preset)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from gateway.dialects.chat.schema import (
    ChatCompletionRequest,
    ChatMessageIn,
    ImageURLPart,
    JSONObjectFormat,
    JSONSchemaFormat,
    NamedToolChoice,
    text_of,
)
from gateway.dialects.chat.session_messages import replayed
from gateway.dialects.openai_common import asked, template_kwargs
from gateway.errors import APIError
from gateway.images import count_image, image_bytes
from gateway.sampling_defaults import Asked
from protocol import ErrorCode
from protocol.generation import ChatMessage, GenerateRequest, SamplingParams, ToolCall, ToolChoice, ToolSpec


async def images_of(req: ChatCompletionRequest, settings) -> dict[int, list[bytes]]:
    """Each message's images (by message index), decoded and checked. Whether the model takes images is the
    worker's to say: a text model's worker answers a request with images with a clear 400."""
    images: dict[int, list[bytes]] = {}
    count = 0
    for i, message in enumerate(req.messages):
        for j, part in enumerate(message.content if isinstance(message.content, list) else ()):
            if isinstance(part, ImageURLPart):
                param, count = f"messages[{i}].content[{j}].image_url", count + 1
                count_image(count, settings, param)
                images.setdefault(i, []).append(await image_bytes(part.image_url, settings, param))
    return images


def chat_message(m: ChatMessageIn, images: Sequence[bytes] = ()) -> ChatMessage:
    calls = [ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments) for c in m.tool_calls or ()]
    return ChatMessage(
        role=m.role,
        content=text_of(m),
        tool_calls=calls,
        tool_call_id=m.tool_call_id,
        name=m.name,
        images=list(images),
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
        messages=[replayed(m) for m in history or ()]
        + [chat_message(m, (images or {}).get(i, [])) for i, m in enumerate(req.messages)],
        tools=tools,
        tool_choice=tool_choice,
        json_schema=json_schema,
        sampling=SamplingParams(seed=req.seed, logprobs=req.logprobs, top_logprobs=req.top_logprobs or 0),
        trim_history=history is not None,
        chat_template_kwargs=template_kwargs(req.chat_template_kwargs, req.reasoning_effort),
        reasoning_budget=req.reasoning_budget,
    )


def asked_of(req: ChatCompletionRequest) -> Asked:
    """The sampling fields the request set itself (the rest: the model's defaults, the preset)."""
    return asked(req, req.max_completion_tokens or req.max_tokens)

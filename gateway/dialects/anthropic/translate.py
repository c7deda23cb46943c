"""Anthropic Messages -> the worker's GenerateRequest.

System prompt, text, image and tool blocks map onto the chat messages every worker understands: tool_use
blocks become an assistant's tool calls, tool_result blocks become `tool` messages, base64 image blocks
become raw image bytes on the message (for vision models; a text model refuses them).
"""

from __future__ import annotations

import json
import uuid

from gateway.config import GatewaySettings
from gateway.dialects.anthropic.schema import (
    CountTokensRequest,
    ImageBlock,
    MessagesRequest,
    RedactedThinkingBlock,
    TextBlock,
    ThinkingBlock,
    ToolChoiceIn,
    ToolResultBlock,
    ToolUseBlock,
)
from gateway.errors import APIError
from gateway.images import MEDIA_TYPES, check_image, count_image, decode_base64
from gateway.sampling_defaults import Asked
from protocol import ErrorCode
from protocol.generation import ChatMessage, GenerateRequest, SamplingDefaults, ToolCall, ToolChoice, ToolSpec

MAX_IMAGE_BYTES = 5 * 1024 * 1024  # Anthropic's own limit per image


def _invalid(message: str, param: str) -> APIError:
    return APIError(ErrorCode.INVALID_REQUEST, message, param=param)


def _image(block: ImageBlock, where: str, settings: GatewaySettings) -> bytes:
    source = block.source
    if source.type != "base64" or source.data is None:
        raise _invalid("Only base64 image sources are supported", f"{where}.source")
    if source.media_type not in MEDIA_TYPES:
        raise _invalid(f"Image media_type must be one of {', '.join(MEDIA_TYPES)}", f"{where}.source.media_type")
    if len(source.data) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise _invalid(f"The image is larger than {MAX_IMAGE_BYTES // 2**20} MB", f"{where}.source.data")
    data = decode_base64(source.data, f"{where}.source.data")
    # The checks OpenAI image parts get: the format the bytes are in is the declared one, pixels.
    check_image(data, settings, f"{where}.source.data", declared=source.media_type)
    return data


def _text(content: str | list[TextBlock | ImageBlock]) -> str:
    return content if isinstance(content, str) else "".join(b.text for b in content if isinstance(b, TextBlock))


def _messages(req: CountTokensRequest, settings: GatewaySettings) -> list[ChatMessage]:
    out = []
    if req.system:
        out.append(ChatMessage(role="system", content=_text(req.system)))
    count = 0  # images so far
    for i, m in enumerate(req.messages):
        blocks = [TextBlock(text=m.content)] if isinstance(m.content, str) else m.content
        if not blocks:
            raise _invalid("A message needs at least one content block", f"messages[{i}].content")
        text, images, calls = [], [], []
        for j, b in enumerate(blocks):
            where = f"messages[{i}].content[{j}]"
            if isinstance(b, TextBlock):
                text.append(b.text)
            elif isinstance(b, ImageBlock):
                count += 1
                count_image(count, settings, where)
                images.append(_image(b, where, settings))
            elif isinstance(b, ToolUseBlock) and m.role == "assistant":
                calls.append(ToolCall(id=b.id, name=b.name, arguments=json.dumps(b.input)))
            elif isinstance(b, ThinkingBlock | RedactedThinkingBlock) and m.role == "assistant":
                continue  # earlier thinking: clients send it back, models are not shown it again
            elif isinstance(b, ToolResultBlock) and m.role == "user":
                result = _text(b.content)
                out.append(
                    ChatMessage(
                        role="tool", content=f"Error: {result}" if b.is_error else result, tool_call_id=b.tool_use_id
                    )
                )
            else:
                raise _invalid(f"A {m.role} message cannot hold a {type(b).__name__} block", where)
        if text or images or calls:
            out.append(ChatMessage(role=m.role, content="".join(text), images=images, tool_calls=calls))
    return out


def _tools(req: CountTokensRequest) -> tuple[list[ToolSpec], ToolChoice]:
    tools = [ToolSpec(name=t.name, description=t.description, parameters=t.input_schema) for t in req.tools or ()]
    choice = req.tool_choice or ToolChoiceIn(type="auto")
    if choice.type in ("any", "tool") and not tools:
        raise _invalid(f"tool_choice '{choice.type}' needs tools", "tool_choice")
    if choice.type == "tool":
        if choice.name not in {t.name for t in tools}:
            raise _invalid(f"tool_choice names the tool '{choice.name}', which is not among the tools", "tool_choice")
        return tools, ToolChoice(mode="required", name=choice.name)
    return tools, ToolChoice(mode={"any": "required"}.get(choice.type, choice.type))


def _thinking(req: CountTokensRequest) -> tuple[dict, int | None]:
    """(chat template variables, thinking budget) for `thinking`: on or off through the template's
    `enable_thinking`, and a cap that makes the model end its thinking and answer."""
    thinking = req.thinking
    if thinking is None or thinking.type == "adaptive":
        return {}, None
    if thinking.type == "disabled":
        return {"enable_thinking": False}, None
    if thinking.budget_tokens is None:
        raise _invalid("thinking.budget_tokens is required when thinking is enabled", "thinking.budget_tokens")
    if isinstance(req, MessagesRequest) and thinking.budget_tokens >= req.max_tokens:
        raise _invalid("thinking.budget_tokens must be less than max_tokens", "thinking.budget_tokens")
    return {"enable_thinking": True}, thinking.budget_tokens


def to_generate_request(req: CountTokensRequest, settings: GatewaySettings) -> GenerateRequest:
    tools, tool_choice = _tools(req)
    template, budget = _thinking(req)
    request_id = f"msg_{uuid.uuid4().hex[:24]}"
    if not isinstance(req, MessagesRequest):
        return GenerateRequest(
            request_id=request_id,
            messages=_messages(req, settings),
            tools=tools,
            tool_choice=tool_choice,
            count_only=True,
            chat_template_kwargs=template,
        )
    output = req.output_config.format if req.output_config else None
    if output is not None and tool_choice.mode == "required":
        raise _invalid("output_config.format cannot be combined with a required tool call", "tool_choice")
    return GenerateRequest(
        request_id=request_id,
        messages=_messages(req, settings),
        tools=tools,
        tool_choice=tool_choice,
        json_schema=output.schema if output else None,
        chat_template_kwargs=template,
        reasoning_budget=budget,
    )


def asked_of(req: CountTokensRequest) -> Asked:
    """The sampling fields the request set itself (the rest: the model's defaults, the preset); count_tokens
    asks nothing but a preset, whose system prompt counts."""
    if not isinstance(req, MessagesRequest):
        return Asked(preset=req.preset)
    own = SamplingDefaults(
        temperature=req.temperature, top_p=req.top_p, top_k=req.top_k, max_tokens=req.max_tokens,
        stop=req.stop_sequences,
    )  # fmt: skip
    return Asked(own=own, preset=req.preset)

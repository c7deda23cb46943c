"""OpenAI Responses -> the worker's GenerateRequest.

Input items are first written down as the API lists them (`input_items`: each with an id and a status), and the
conversation is built from that list, so a stored conversation (a previous response's input and output) and a
new request's input go through the same steps. Items become the chat messages every worker understands:
instructions a system message, messages by role (their images as image bytes), function calls an assistant's
tool calls, function call outputs `tool` messages; reasoning items stay out (a model is not shown its earlier
thinking again).
"""

from __future__ import annotations

import uuid

from gateway.config import GatewaySettings
from gateway.dialects.openai_common import asked, template_kwargs
from gateway.dialects.responses.schema import (
    FunctionCallItem,
    FunctionCallOutputItem,
    InputText,
    Item,
    MessageItem,
    NamedFunction,
    OutputText,
    ReasoningItem,
    Refusal,
    ResponsesRequest,
    TextFormatJSONObject,
    TextFormatJSONSchema,
)
from gateway.errors import APIError
from gateway.images import count_image, image_bytes
from gateway.sampling_defaults import Asked
from protocol import ErrorCode
from protocol.generation import ChatMessage, GenerateRequest, SamplingParams, ToolCall, ToolChoice, ToolSpec


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _invalid(message: str, param: str | None = None) -> APIError:
    return APIError(ErrorCode.INVALID_REQUEST, message, param=param)


def _part(part) -> dict:
    if isinstance(part, InputText):
        return {"type": "input_text", "text": part.text}
    if isinstance(part, OutputText):
        return {"type": "output_text", "text": part.text, "annotations": part.annotations}
    if isinstance(part, Refusal):
        return {"type": "refusal", "refusal": part.refusal}
    return {"type": "input_image", "image_url": part.image_url, "file_id": part.file_id, "detail": part.detail}


def listed(items: list[Item]) -> list[dict]:
    """The request's input items as `input_items` lists them: each with an id and a status."""
    out = []
    for item in items:
        if isinstance(item, MessageItem):
            parts = item.content
            if isinstance(parts, str):
                parts = [OutputText(text=parts) if item.role == "assistant" else InputText(parts)]
            content = [_part(p) for p in parts]
            out.append(
                {"id": item.id or new_id("msg"), "type": "message", "role": item.role, "content": content}
                | {"status": item.status or "completed"}
            )
        elif isinstance(item, FunctionCallItem):
            out.append(
                {"id": item.id or new_id("fc"), "type": "function_call", "call_id": item.call_id, "name": item.name}
                | {"arguments": item.arguments, "status": item.status or "completed"}
            )
        elif isinstance(item, FunctionCallOutputItem):
            output = item.output if isinstance(item.output, str) else [_part(p) for p in item.output]
            out.append(
                {"id": item.id or new_id("fco"), "type": "function_call_output", "call_id": item.call_id}
                | {"output": output, "status": item.status or "completed"}
            )
        elif isinstance(item, ReasoningItem):
            content = [{"type": "reasoning_text", "text": c.text} for c in item.content or ()]
            out.append(
                {"id": item.id or new_id("rs"), "type": "reasoning", "summary": item.summary, "content": content}
            )
    return out


def _text(content) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text") or p.get("refusal") or "" for p in content if p["type"] != "input_image")


async def _images(content, settings: GatewaySettings, where: str, before: int) -> list[bytes]:
    """A message's images, checked (`before`: how many the request's earlier messages hold)."""
    images = []
    for j, part in enumerate(content if isinstance(content, list) else ()):
        if part["type"] == "input_image":
            count_image(before + len(images) + 1, settings, f"{where}.content[{j}]")
            if not part.get("image_url"):
                raise _invalid("Only images given by image_url are supported (not file_id)", f"{where}.content[{j}]")
            url = {"url": part["image_url"]}
            images.append(await image_bytes(url, settings, f"{where}.content[{j}].image_url"))
    return images


async def to_messages(instructions: str | None, items: list[dict], settings: GatewaySettings) -> list[ChatMessage]:
    """The conversation as chat messages: `instructions` first, then the listed items in order."""
    out = [ChatMessage(role="system", content=instructions)] if instructions else []
    names: dict[str, str] = {}  # call_id -> the function called: tool messages name it
    for i, item in enumerate(items):
        kind = item["type"]
        if kind == "message":
            images = await _images(item["content"], settings, f"input[{i}]", sum(len(m.images) for m in out))
            out.append(ChatMessage(role=item["role"], content=_text(item["content"]), images=images))
        elif kind == "function_call":
            call = ToolCall(id=item["call_id"], name=item["name"], arguments=item["arguments"])
            names[call.id] = call.name
            last = out[-1] if out else None
            if last is not None and last.role == "assistant" and not last.images:  # one turn, several calls
                out[-1] = ChatMessage(role="assistant", content=last.content, tool_calls=[*last.tool_calls, call])
            else:
                out.append(ChatMessage(role="assistant", tool_calls=[call]))
        elif kind == "function_call_output":
            content = _text(item["output"])
            call_id = item["call_id"]
            out.append(ChatMessage(role="tool", content=content, tool_call_id=call_id, name=names.get(call_id)))
    return out


def _tools(req: ResponsesRequest) -> tuple[list[ToolSpec], ToolChoice]:
    tools = []
    for i, tool in enumerate(req.tools or ()):
        if tool.type != "function":
            raise _invalid(f"Only function tools are supported here, not {tool.type!r}", f"tools[{i}].type")
        if tool.name is None:
            raise _invalid("A function tool needs a name", f"tools[{i}].name")
        tools.append(ToolSpec(name=tool.name, description=tool.description or "", parameters=tool.parameters or {}))
    choice = req.tool_choice or "auto"
    if isinstance(choice, NamedFunction):
        if choice.name not in {t.name for t in tools}:
            raise _invalid(
                f"tool_choice names the function '{choice.name}', which is not among the tools", "tool_choice"
            )
        return tools, ToolChoice(mode="required", name=choice.name)
    if choice == "required" and not tools:
        raise _invalid("tool_choice 'required' needs tools", "tool_choice")
    return tools, ToolChoice(mode=choice)


def _json_schema(req: ResponsesRequest) -> dict | None:
    fmt = req.text.format if req.text else None
    if isinstance(fmt, TextFormatJSONObject):
        return {"type": "object"}
    if isinstance(fmt, TextFormatJSONSchema):
        return fmt.schema
    return None


def validate(req: ResponsesRequest) -> None:
    """What the schema cannot say."""
    if req.background:
        raise _invalid("Background responses are not supported: leave out background", "background")


def asked_of(req: ResponsesRequest) -> Asked:
    """The sampling fields the request set itself (the rest: the model's defaults, the preset)."""
    return asked(req, req.max_output_tokens)


def to_generate_request(req: ResponsesRequest, response_id: str, messages: list[ChatMessage]) -> GenerateRequest:
    tools, tool_choice = _tools(req)
    json_schema = _json_schema(req)
    if json_schema is not None and tool_choice.mode == "required":
        raise _invalid("text.format cannot be combined with a required tool call", "tool_choice")
    effort = req.reasoning.effort if req.reasoning else None
    return GenerateRequest(
        request_id=response_id,
        messages=messages,
        tools=tools,
        tool_choice=tool_choice,
        json_schema=json_schema,
        sampling=SamplingParams(seed=req.seed),  # the rest: asked_of, then the model's defaults and the preset
        # "auto": the oldest turns of a conversation too long for the context are dropped instead of refusing it.
        trim_history=req.truncation == "auto",
        chat_template_kwargs=template_kwargs(req.chat_template_kwargs, effort),
        reasoning_budget=req.reasoning_budget,
    )

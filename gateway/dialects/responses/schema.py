"""OpenAI Responses request types, validated at the edge (gateway/request_body.py decodes them).

`input` is a string or a list of items. Items are decoded one by one by their `type` (a message may leave it out,
as the SDK's "easy" input message does), so an error names the item: `input[2].call_id`.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from gateway.dialects.bounds import Tokens
from gateway.dialects.chat.schema import ToolName
from gateway.dialects.openai_common import Effort, Sampling
from gateway.errors import APIError
from gateway.request_body import invalid
from protocol import ErrorCode


class InputText(msgspec.Struct, tag_field="type", tag="input_text"):
    text: str


class OutputText(msgspec.Struct, tag_field="type", tag="output_text", kw_only=True):
    text: str
    annotations: list = []


class Refusal(msgspec.Struct, tag_field="type", tag="refusal"):
    refusal: str


class InputImage(msgspec.Struct, tag_field="type", tag="input_image", kw_only=True):
    image_url: str | None = None  # a data URL (or an http(s) URL where the gateway fetches images)
    file_id: str | None = None
    detail: str = "auto"


class ReasoningText(msgspec.Struct, tag_field="type", tag="reasoning_text"):
    text: str


Part = InputText | OutputText | Refusal | InputImage


class MessageItem(msgspec.Struct, kw_only=True):
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[Part]
    id: str | None = None
    status: str | None = None


class FunctionCallItem(msgspec.Struct, kw_only=True):
    call_id: Annotated[str, Meta(min_length=1)]
    name: str
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(msgspec.Struct, kw_only=True):
    call_id: Annotated[str, Meta(min_length=1)]
    output: str | list[InputText | OutputText | InputImage]
    id: str | None = None
    status: str | None = None


class ReasoningItem(msgspec.Struct, kw_only=True):
    """An earlier answer's thinking, as a stateless client (Codex) sends it back: not shown to the model again."""

    id: str | None = None
    summary: list = []
    content: list[ReasoningText] | None = None
    encrypted_content: str | None = None


Item = MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItem
ITEM_TYPES: dict[str, type[Item]] = {
    "message": MessageItem,
    "function_call": FunctionCallItem,
    "function_call_output": FunctionCallOutputItem,
    "reasoning": ReasoningItem,
}


def decode_items(raw: list[dict]) -> list[Item]:
    """Each input item by its type; a 400 naming the item (and the field) for one that does not fit."""
    items = []
    for i, entry in enumerate(raw):
        kind = entry.get("type", "message") if isinstance(entry, dict) else None
        cls = ITEM_TYPES.get(kind)
        if cls is None:
            known = ", ".join(ITEM_TYPES)
            raise APIError(
                ErrorCode.INVALID_REQUEST, f"Input items of type {kind!r} are not supported ({known})", f"input[{i}]"
            )
        try:
            items.append(msgspec.convert({k: v for k, v in entry.items() if k != "type"}, cls))
        except msgspec.ValidationError as exc:
            raise invalid(exc, f"input[{i}]") from None
    return items


class FunctionTool(msgspec.Struct, kw_only=True):
    type: str
    name: ToolName | None = None
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None


class NamedFunction(msgspec.Struct, kw_only=True):
    type: Literal["function"]
    name: ToolName


class TextFormatText(msgspec.Struct, tag_field="type", tag="text"):
    pass


class TextFormatJSONObject(msgspec.Struct, tag_field="type", tag="json_object"):
    pass


class TextFormatJSONSchema(msgspec.Struct, tag_field="type", tag="json_schema", kw_only=True):
    name: str = "response"
    schema: dict = {}
    description: str | None = None
    strict: bool | None = None


class TextConfig(msgspec.Struct, kw_only=True):
    format: TextFormatText | TextFormatJSONObject | TextFormatJSONSchema = msgspec.field(default_factory=TextFormatText)
    verbosity: str | None = None  # accepted, no effect here


class ReasoningConfig(msgspec.Struct, kw_only=True):
    effort: Effort | None = None  # "none" and "minimal" turn a reasoning model's thinking off
    summary: str | None = None  # accepted: the thinking itself comes back, not a summary


class ResponsesRequest(Sampling, kw_only=True):
    input: str | Annotated[list[dict], Meta(min_length=1)]
    instructions: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunction | None = None
    parallel_tool_calls: bool = True
    text: TextConfig | None = None
    max_output_tokens: Tokens | None = None
    reasoning: ReasoningConfig | None = None
    store: bool = True
    previous_response_id: str | None = None
    metadata: Annotated[dict[str, str], Meta(max_length=16)] | None = None
    truncation: Literal["auto", "disabled"] = "disabled"
    background: bool = False
    user: str | None = None
    # Beyond OpenAI, as in chat completions: variables for the chat template, a cap on thinking tokens.
    chat_template_kwargs: dict | None = None
    reasoning_budget: Tokens | None = None

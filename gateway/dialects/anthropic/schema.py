"""Anthropic Messages request types (and count_tokens'), validated at the edge (gateway/request_body.py)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from gateway.dialects.bounds import MAX_STOP_SEQUENCES, Tokens, TopK, TopP, stops, temperature


class TextBlock(msgspec.Struct, tag_field="type", tag="text", kw_only=True):
    text: str


class ImageSource(msgspec.Struct, kw_only=True):
    type: Literal["base64", "url"]
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class ImageBlock(msgspec.Struct, tag_field="type", tag="image", kw_only=True):
    source: ImageSource


class ToolUseBlock(msgspec.Struct, tag_field="type", tag="tool_use", kw_only=True):
    id: str
    name: str
    input: dict


class ToolResultBlock(msgspec.Struct, tag_field="type", tag="tool_result", kw_only=True):
    tool_use_id: str
    content: str | list[TextBlock | ImageBlock] = ""
    is_error: bool = False


class ThinkingBlock(msgspec.Struct, tag_field="type", tag="thinking", kw_only=True):
    """An earlier answer's thinking, as clients send it back: it does not go to the model again."""

    thinking: str = ""
    signature: str = ""


class RedactedThinkingBlock(msgspec.Struct, tag_field="type", tag="redacted_thinking", kw_only=True):
    data: str = ""


Block = TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock


class MessageIn(msgspec.Struct, kw_only=True):
    role: Literal["user", "assistant"]
    content: str | list[Block]


class ToolDef(msgspec.Struct, kw_only=True):
    name: Annotated[str, Meta(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: str = ""
    input_schema: dict


class ToolChoiceIn(msgspec.Struct, kw_only=True):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None


class JSONOutputFormat(msgspec.Struct, kw_only=True):
    type: Literal["json_schema"]
    schema: dict


class OutputConfig(msgspec.Struct, kw_only=True):
    format: JSONOutputFormat | None = None  # structured output: enforced by constrained decoding
    effort: str | None = None  # accepted, no effect here


class ThinkingConfig(msgspec.Struct, kw_only=True):
    """Extended thinking: on (at most `budget_tokens` of it), off, or as the model decides ("adaptive")."""

    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: Tokens | None = None


class CountTokensRequest(msgspec.Struct, kw_only=True):
    model: str
    preset: Annotated[str, Meta(min_length=1, max_length=64)] | None = None  # one of the config's `presets:`
    messages: Annotated[list[MessageIn], Meta(min_length=1)]
    system: str | list[TextBlock] | None = None
    tools: list[ToolDef] | None = None
    tool_choice: ToolChoiceIn | None = None
    thinking: ThinkingConfig | None = None  # None: as the model's template does by default


class MessagesRequest(CountTokensRequest, kw_only=True):
    max_tokens: Tokens
    stop_sequences: stops(MAX_STOP_SEQUENCES) | None = None
    # Left out: the server's to fill (the model's defaults, the preset); the SDK sends them in extra_body.
    temperature: temperature(1) | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    stream: bool = False
    metadata: dict | None = None
    output_config: OutputConfig | None = None

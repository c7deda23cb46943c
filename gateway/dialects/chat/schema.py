"""OpenAI Chat Completions request types, validated at the edge (gateway/request_body.py decodes them)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from gateway.dialects.bounds import Tokens
from gateway.dialects.openai_common import Effort, OpenAIRequest

MAX_TOP_LOGPROBS = 10


class TextPart(msgspec.Struct, tag_field="type", tag="text"):
    text: str


class ImageURLPart(msgspec.Struct, tag_field="type", tag="image_url"):
    image_url: dict


class FunctionCallIn(msgspec.Struct, kw_only=True):
    name: str
    arguments: str  # JSON text, as the API sends it


class ToolCallIn(msgspec.Struct, kw_only=True):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(msgspec.Struct, kw_only=True):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart | ImageURLPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # a tool message: the call it answers


ToolName = Annotated[str, Meta(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]


class FunctionDef(msgspec.Struct, kw_only=True):
    name: ToolName
    description: str = ""
    parameters: dict = {}


class ToolIn(msgspec.Struct, kw_only=True):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(msgspec.Struct, kw_only=True):
    name: ToolName


class NamedToolChoice(msgspec.Struct, kw_only=True):
    type: Literal["function"]
    function: NamedFunction


class TextFormat(msgspec.Struct, tag_field="type", tag="text"):
    pass


class JSONObjectFormat(msgspec.Struct, tag_field="type", tag="json_object"):
    pass


class JSONSchemaSpec(msgspec.Struct, kw_only=True):
    name: str
    schema: dict = {}  # OpenAI allows it to be left out: then any JSON
    description: str | None = None
    strict: bool | None = None


class JSONSchemaFormat(msgspec.Struct, tag_field="type", tag="json_schema"):
    json_schema: JSONSchemaSpec


class ChatCompletionRequest(OpenAIRequest, kw_only=True):
    messages: Annotated[list[ChatMessageIn], Meta(min_length=1)]
    max_tokens: Tokens | None = None
    max_completion_tokens: Tokens | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Meta(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    tools: list[ToolIn] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: TextFormat | JSONObjectFormat | JSONSchemaFormat | None = None
    # Beyond OpenAI: continue a stored conversation (POST /api/v1/sessions creates one). Its history goes before
    # `messages`; `messages` and the answer are appended to it.
    session_id: Annotated[str, Meta(min_length=1, max_length=64)] | None = None
    # With session_id: keep the answer's thinking in the session too (it is not by default).
    session_keeps_reasoning: bool = False
    # Reasoning models: the effort turns thinking on or off ("none", "minimal": off); variables for the chat
    # template (e.g. {"enable_thinking": false}); beyond OpenAI, a cap on thinking tokens after which the model is
    # made to end its thinking and answer.
    reasoning_effort: Effort | None = None
    chat_template_kwargs: dict | None = None
    reasoning_budget: Tokens | None = None


def text_of(message: ChatMessageIn) -> str:
    """A message's text: its string, or its text parts joined (image parts travel apart, as image bytes)."""
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    return "".join(part.text for part in message.content if not isinstance(part, ImageURLPart))

"""Chat messages as the chat template receives them, tools included.

A template that knows tools (it mentions `tools`) gets them, and the earlier calls and results, the way
Hugging Face templates expect. A template that does not (SmolLM2's, for one) gets a documented fallback: the
tools described in the system message, in the Hermes / json_tools format that mlx-lm's json_tools parser
reads back, earlier calls written out in that format, and tool results as user turns.
"""

from __future__ import annotations

import json

from mlx_lm.tool_parsers import json_tools

from protocol.generation import ChatMessage, ToolSpec
from worker.tool_calls import openai_tools

FALLBACK_INSTRUCTIONS = (
    "You are a function calling AI model. You may call one or more functions to assist with the user query. "
    "The functions are described in JSON within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n"
    "For each function call, return a JSON object with the function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


def template_knows_tools(tokenizer) -> bool:
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and "tools" in template


def _arguments(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def native_messages(messages: list[ChatMessage]) -> list[dict]:
    out = []
    for m in messages:
        entry: dict = {"role": m.role, "content": m.content}
        if m.tool_calls:
            entry["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": _arguments(c.arguments)}}
                for c in m.tool_calls
            ]
        if m.tool_call_id is not None:
            entry["tool_call_id"] = m.tool_call_id
        if m.name is not None:
            entry["name"] = m.name
        out.append(entry)
    return out


def fallback_messages(messages: list[ChatMessage], tools: list[ToolSpec]) -> list[dict]:
    out = []
    for m in messages:
        if m.role == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{m.content}\n</tool_response>"})
            continue
        calls = [json.dumps({"name": c.name, "arguments": _arguments(c.arguments)}) for c in m.tool_calls]
        parts = [m.content] if m.content else []
        parts += [f"{json_tools.tool_call_start}\n{call}\n{json_tools.tool_call_end}" for call in calls]
        out.append({"role": m.role, "content": "\n".join(parts)})
    if tools:
        described = "\n".join(json.dumps(t) for t in openai_tools(tools))
        instructions = FALLBACK_INSTRUCTIONS.format(tools=described)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{instructions}"}
        else:
            out.insert(0, {"role": "system", "content": instructions})
    return out


def template_inputs(tokenizer, messages: list[ChatMessage], tools: list[ToolSpec]) -> tuple[list[dict], dict]:
    """(messages, extra keyword arguments) for tokenizer.apply_chat_template."""
    if template_knows_tools(tokenizer):
        return native_messages(messages), ({"tools": openai_tools(tools)} if tools else {})
    return fallback_messages(messages, tools), {}

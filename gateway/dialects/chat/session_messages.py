"""A session's messages as stored: OpenAI chat messages, tool calls included (an assistant's `tool_calls`, a
tool message's `tool_call_id` and `name`), so a tool-using conversation continues across turns and reads back
through GET /api/v1/sessions/{id}/messages in the shape clients send it."""

from __future__ import annotations

from protocol.generation import ChatMessage, ToolCall


def stored(message: ChatMessage) -> dict:
    """A message as the session keeps it (its images never: a session stores text only)."""
    entry: dict = {"role": message.role, "content": message.content}
    if message.tool_calls:
        entry["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        entry["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        entry["name"] = message.name
    return entry


def replayed(entry: dict) -> ChatMessage:
    """A stored message, back as the worker reads it (sessions stored before tool calls were kept have none)."""
    calls = [
        ToolCall(id=c["id"], name=c["function"]["name"], arguments=c["function"]["arguments"])
        for c in entry.get("tool_calls") or ()
    ]
    return ChatMessage(
        role=entry["role"],
        content=entry.get("content") or "",
        tool_calls=calls,
        tool_call_id=entry.get("tool_call_id"),
        name=entry.get("name"),
    )

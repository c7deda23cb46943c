"""A reasoning model through every API: `thinker` is the bundled SmolLM2 under a chat template that opens a <think>
block (tests/thinking_model.py). SmolLM2 never closes it by itself, so each request caps its thinking (a budget
after which the worker forces </think>) and gives the answer a JSON schema, so there is always an answer and it
always parses: the thinking and the answer arrive apart, whole and streamed, in each dialect's own fields."""

from __future__ import annotations

import json

import anthropic
import httpx
import openai
import pytest

ASK = "What is the capital of France?"
CAPITAL = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 12}},
    "required": ["city"],
    "additionalProperties": False,
}
CHAT = {
    "model": "thinker",
    "messages": [{"role": "user", "content": ASK}],
    "temperature": 0,
    "max_tokens": 24,
    "response_format": {"type": "json_schema", "json_schema": {"name": "capital", "schema": CAPITAL}},
}
BUDGET = {"reasoning_budget": 4}


@pytest.fixture(scope="module")
def claude(server):
    return anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=120)


def no_markers(*texts: str) -> bool:
    return not any(marker in text for text in texts for marker in ("<think>", "</think>"))


def test_chat_returns_thinking_apart_from_the_answer_whole_and_streamed(client):
    whole = client.chat.completions.create(**CHAT, extra_body=BUDGET)
    message = whole.choices[0].message
    thinking = message.model_extra["reasoning_content"]
    assert thinking and message.model_extra["reasoning"] == thinking  # both names by default
    assert json.loads(message.content)["city"] and no_markers(thinking, message.content)
    assert whole.usage.completion_tokens_details.reasoning_tokens >= BUDGET["reasoning_budget"]
    chunks = list(client.chat.completions.create(**CHAT, extra_body=BUDGET, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    streamed_thinking = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas)
    streamed_answer = "".join(d.content or "" for d in deltas)
    assert (streamed_thinking, streamed_answer) == (thinking, message.content)
    first_answer = next(i for i, d in enumerate(deltas) if d.content)
    assert all(not (d.model_extra or {}).get("reasoning_content") for d in deltas[first_answer:])


def test_reasoning_field_per_service_names_the_field(secure_server, keys):
    ops = openai.OpenAI(base_url=f"{secure_server.url}/v1", api_key=keys.ops, max_retries=0, timeout=120)
    message = ops.chat.completions.create(**CHAT, extra_body=BUDGET).choices[0].message
    assert message.model_extra.get("reasoning") and "reasoning_content" not in message.model_extra


def test_thinking_turned_off_leaves_only_the_answer(client):
    message = client.chat.completions.create(**CHAT, reasoning_effort="none").choices[0].message
    assert "reasoning_content" not in message.model_extra and json.loads(message.content)["city"]


def test_a_tool_call_after_thinking_is_parsed_from_the_answer(client):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": CAPITAL}}]
    body = CHAT | {"tools": tools, "tool_choice": "required", "max_tokens": 40, "response_format": None}
    message = client.chat.completions.create(**body, extra_body=BUDGET).choices[0].message
    [call] = message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"]
    assert message.model_extra["reasoning_content"] and "tool_call" not in message.model_extra["reasoning_content"]


def test_anthropic_thinking_blocks_whole_and_streamed(claude):
    body = {
        "model": "thinker",
        "max_tokens": 24,
        "messages": [{"role": "user", "content": ASK}],
        "thinking": {"type": "enabled", "budget_tokens": 4},
        "output_config": {"format": {"type": "json_schema", "schema": CAPITAL}},
        "extra_body": {"temperature": 0},
    }
    reply = claude.messages.create(**body)
    thinking, text = reply.content
    assert thinking.type == "thinking" and thinking.thinking and thinking.signature
    assert text.type == "text" and json.loads(text.text)["city"] and no_markers(thinking.thinking, text.text)
    with claude.messages.stream(**body) as stream:
        kinds = [(e.type, getattr(getattr(e, "delta", None), "type", None)) for e in stream]
        streamed = stream.get_final_message()
    assert [b.type for b in streamed.content] == ["thinking", "text"]
    assert (streamed.content[0].thinking, streamed.content[1].text) == (thinking.thinking, text.text)
    assert ("content_block_delta", "signature_delta") in kinds and ("content_block_delta", "thinking_delta") in kinds
    # The next turn sends the thinking back, as clients do: it is accepted and not shown to the model again.
    follow = body | {"thinking": {"type": "disabled"}}
    follow["messages"] = [
        *body["messages"],
        {"role": "assistant", "content": reply.content},
        {"role": "user", "content": "And of Spain?"},
    ]
    assert [b.type for b in claude.messages.create(**follow).content] == ["text"]


def test_responses_reasoning_items_whole_and_streamed(client):
    body = {
        "model": "thinker",
        "input": ASK,
        "temperature": 0,
        "max_output_tokens": 24,
        "text": {"format": {"type": "json_schema", "name": "capital", "schema": CAPITAL}},
        "extra_body": BUDGET,
    }
    reply = client.responses.create(**body)
    reasoning, message = reply.output
    assert message.type == "message"
    assert reasoning.type == "reasoning" and reasoning.content[0].type == "reasoning_text"
    assert reasoning.content[0].text and json.loads(reply.output_text)["city"]
    assert reply.usage.output_tokens_details.reasoning_tokens >= BUDGET["reasoning_budget"]
    with client.responses.stream(**body) as stream:
        events = list(stream)
        final = stream.get_final_response()
    thinking = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert thinking == reasoning.content[0].text and final.output_text == reply.output_text
    assert [e.output_index for e in events if e.type == "response.output_item.done"] == [0, 1]
    quiet = client.responses.create(**body | {"reasoning": {"effort": "none"}})
    assert [item.type for item in quiet.output] == ["message"]


def test_sessions_store_the_answer_without_the_thinking_unless_asked(server):
    def turn(**extra) -> dict:
        session = httpx.post(f"{server.url}/api/v1/sessions", json={}, timeout=30).json()["id"]
        body = CHAT | BUDGET | {"session_id": session} | extra
        answer = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120).json()
        stored = httpx.get(f"{server.url}/api/v1/sessions/{session}/messages", timeout=30).json()["data"]
        assert stored[-1]["content"] == answer["choices"][0]["message"]["content"]
        return stored[-1]

    assert "reasoning_content" not in turn()
    assert turn(session_keeps_reasoning=True)["reasoning_content"]

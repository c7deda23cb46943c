"""Tool calls and structured output through the real server, with the openai and anthropic SDKs as clients.

SmolLM2's chat template has no tool support, so these go through the documented fallback (tools described
in the system prompt, calls in the json_tools format parsed by mlx-lm's parser). A required tool call and a
JSON schema are enforced by constrained decoding, so the model's output is deterministic and always parses.
"""

from __future__ import annotations

import json

import anthropic
import httpx
import jsonschema
import pydantic
import pytest

WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 24}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Current weather for a city", "parameters": WEATHER_PARAMS},
    }
]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
GET_WEATHER = {"type": "function", "function": {"name": "get_weather"}}


def test_chat_with_a_required_tool_returns_a_parsed_tool_call(client):
    reply = client.chat.completions.create(
        model="smollm2", messages=ASK, tools=TOOLS, tool_choice=GET_WEATHER, temperature=0, max_tokens=40
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_PARAMS)


def test_streamed_tool_call_deltas_match_the_whole_answer(client):
    whole = client.chat.completions.create(
        model="smollm2", messages=ASK, tools=TOOLS, tool_choice="required", temperature=0, max_tokens=40
    )
    chunks = list(
        client.chat.completions.create(
            model="smollm2",
            messages=ASK,
            tools=TOOLS,
            tool_choice="required",
            temperature=0,
            max_tokens=40,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or ()]
    [delta] = deltas
    [call] = whole.choices[0].message.tool_calls
    assert delta.index == 0 and delta.function.name == call.function.name
    assert delta.function.arguments == call.function.arguments
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_tool_results_go_back_to_the_model(client):
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 24 degrees"},
    ]
    reply = client.chat.completions.create(
        model="smollm2", messages=messages, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=24
    )
    assert reply.choices[0].message.content and not reply.choices[0].message.tool_calls
    # The tool exchange is in the prompt: it is longer than the question alone.
    alone = client.chat.completions.create(model="smollm2", messages=ASK, temperature=0, max_tokens=1)
    assert reply.usage.prompt_tokens > alone.usage.prompt_tokens + 20


def test_json_schema_output_validates(client):
    reply = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Describe a person called Ann who is 31."}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}},
        temperature=0,
        max_tokens=32,
    )
    assert reply.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(reply.choices[0].message.content), PERSON)


class Person(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=20)
    age: int


def test_sdk_parse_with_a_pydantic_model_and_json_object(client):
    parsed = client.chat.completions.parse(
        model="smollm2",
        messages=[{"role": "user", "content": "Describe a person called Bob who is 40."}],
        response_format=Person,
        temperature=0,
        max_tokens=32,
    )
    assert isinstance(parsed.choices[0].message.parsed, Person)
    reply = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": 'Repeat exactly: {"ok": true}'}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=32,
    )
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


@pytest.fixture(scope="module")
def claude(server):
    return anthropic.Anthropic(base_url=server.url, api_key="not-needed", max_retries=0, timeout=120)


CLAUDE_TOOLS = [{"name": "get_weather", "description": "Current weather for a city", "input_schema": WEATHER_PARAMS}]
GREEDY = {"extra_body": {"temperature": 0}}


def test_anthropic_tool_use_and_tool_result(claude):
    reply = claude.messages.create(
        model="smollm2",
        max_tokens=40,
        messages=ASK,
        tools=CLAUDE_TOOLS,
        tool_choice={"type": "tool", "name": "get_weather"},
        **GREEDY,
    )
    assert reply.stop_reason == "tool_use"
    [use] = [b for b in reply.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.id
    jsonschema.validate(use.input, WEATHER_PARAMS)
    result = {"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 24 degrees"}
    follow_up = claude.messages.create(
        model="smollm2",
        max_tokens=16,
        messages=[*ASK, {"role": "assistant", "content": reply.content}, {"role": "user", "content": [result]}],
        tools=CLAUDE_TOOLS,
        tool_choice={"type": "none"},
        **GREEDY,
    )
    assert follow_up.content[0].type == "text" and follow_up.stop_reason in {"end_turn", "max_tokens"}
    # The tool exchange is in the prompt: it is longer than the question alone.
    alone = claude.messages.count_tokens(model="smollm2", messages=ASK)
    assert follow_up.usage.input_tokens + follow_up.usage.cache_read_input_tokens > alone.input_tokens + 20


def test_anthropic_streamed_tool_use_assembles_its_input(claude):
    with claude.messages.stream(
        model="smollm2", max_tokens=40, messages=ASK, tools=CLAUDE_TOOLS, tool_choice={"type": "any"}, **GREEDY
    ) as stream:
        final = stream.get_final_message()
    [use] = [b for b in final.content if b.type == "tool_use"]
    assert final.stop_reason == "tool_use" and use.name == "get_weather"
    jsonschema.validate(use.input, WEATHER_PARAMS)


def test_anthropic_structured_output(claude):
    reply = claude.messages.create(
        model="smollm2",
        max_tokens=32,
        messages=[{"role": "user", "content": "Describe a person called Ann who is 31."}],
        output_config={"format": {"type": "json_schema", "schema": PERSON}},
        **GREEDY,
    )
    jsonschema.validate(json.loads(reply.content[0].text), PERSON)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
        ({"tools": "get_weather"}, "tools"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}}, None),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"response_format": {"type": "json_object"}, "tools": TOOLS, "tool_choice": "required"}, "tool_choice"),
    ],
)
def test_bad_tool_and_format_requests_are_400s(server, extra, param):
    body = {"model": "smollm2", "messages": ASK, "max_tokens": 8, **extra}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param:
        assert error["param"] == param

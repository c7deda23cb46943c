"""The Responses API through the real server, with the openai SDK as the client: text and instructions, a function
tool round trip, text.format enforced by constrained decoding, previous_response_id chaining (its second turn
served from the prompt cache), streaming with the SDK's event helpers, retrieve, delete, input_items, the Codex
flow (store false, full history each turn), bad input, and another service's ids (a 404, in Redis)."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pydantic
import pytest

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 24}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
GREEDY = {"model": "smollm2", "temperature": 0, "max_output_tokens": 16}


class Capital(pydantic.BaseModel):
    city: str
    country: str


def test_text_with_instructions_is_one_message_with_usage(client):
    reply = client.responses.create(
        input="What is the capital of France?", instructions="Answer in one sentence.", **GREEDY
    )
    assert reply.status == "completed" and reply.object == "response" and reply.id.startswith("resp_")
    [message] = reply.output
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    assert "Paris" in reply.output_text
    assert reply.instructions == "Answer in one sentence." and reply.model == "smollm2"
    assert reply.usage.input_tokens > 10 and 0 < reply.usage.output_tokens <= 16
    assert reply.usage.total_tokens == reply.usage.input_tokens + reply.usage.output_tokens


def test_a_function_tool_round_trip_with_function_call_output(client):
    call_reply = client.responses.create(
        input="What is the weather in Paris?",
        tools=[WEATHER],
        tool_choice="required",
        **GREEDY | {"max_output_tokens": 40},
    )
    [call] = call_reply.output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    answer = client.responses.create(
        previous_response_id=call_reply.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"temperature_c": 21}'}],
        tools=[WEATHER],
        **GREEDY,
    )
    assert answer.output_text and answer.output[0].type == "message"
    if answer.status == "incomplete":  # SmolLM2 rambles: 16 tokens may not be enough to finish
        assert answer.incomplete_details.reason == "max_output_tokens" and answer.usage.output_tokens == 16
    kinds = [item.type for item in client.responses.input_items.list(answer.id, order="asc").data]
    assert kinds == ["message", "function_call", "function_call_output"]


def test_text_format_json_schema_is_enforced_and_parses(client):
    parsed = client.responses.parse(
        input="The capital of France?", text_format=Capital, **GREEDY | {"max_output_tokens": 40}
    )
    assert isinstance(parsed.output_parsed, Capital) and parsed.output_parsed.city
    assert parsed.text.format.type == "json_schema"


def test_previous_response_id_chains_and_the_second_turn_is_served_from_the_prompt_cache(client):
    first = client.responses.create(input="My name is Ana. Say hello.", **GREEDY)
    second = client.responses.create(input="What is my name?", previous_response_id=first.id, **GREEDY)
    assert second.previous_response_id == first.id
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    # The first turn's prompt (and answer) is a prefix of the second's: the worker computes only the rest.
    assert second.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens // 2
    items = client.responses.input_items.list(second.id, order="asc").data
    assert [(i.type, i.role) for i in items] == [("message", "user"), ("message", "assistant"), ("message", "user")]
    assert items[1].content[0].text == first.output_text
    newest_first = client.responses.input_items.list(second.id, limit=2)
    assert [i.id for i in newest_first.data] == [items[2].id, items[1].id] and newest_first.has_more


def test_stream_events_assemble_into_the_stored_response(client):
    with client.responses.stream(input="What is the capital of France?", **GREEDY) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert deltas and {(e.output_index, e.content_index, e.item_id) for e in deltas} == {(0, 0, final.output[0].id)}
    assert "".join(e.delta for e in deltas) == final.output_text and "Paris" in final.output_text
    stored = client.responses.retrieve(final.id)
    assert stored.output_text == final.output_text and stored.usage.output_tokens == final.usage.output_tokens


def test_delete_removes_a_stored_response_and_store_false_keeps_nothing(client):
    reply = client.responses.create(input="Say hi.", **GREEDY)
    client.responses.delete(reply.id)
    for call in (lambda: client.responses.retrieve(reply.id), lambda: client.responses.input_items.list(reply.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.NotFoundError):
        client.responses.create(input="Again?", previous_response_id=reply.id, **GREEDY)
    unstored = client.responses.create(input="Say hi.", store=False, **GREEDY)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_codex_style_stateless_turns_send_the_whole_history(client):
    history: list[dict] = [{"role": "user", "content": "My name is Ana."}]
    first = client.responses.create(input=history, store=False, **GREEDY)
    history += [item.model_dump(exclude_none=True) for item in first.output]
    history.append({"role": "user", "content": "What is my name?"})
    second = client.responses.create(input=history, store=False, **GREEDY)
    assert second.output_text
    assert second.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens // 2


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": [{"type": "web_search_call", "id": "x"}]}, "input[0]"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": "hi", "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
        ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "hi", "background": True}, "background"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input"),
    ],
)
def test_bad_requests_are_400_naming_the_field(server, body, param):
    reply = httpx.post(f"{server.url}/v1/responses", json={"model": "smollm2"} | body, timeout=30)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


def test_another_services_response_is_404_in_redis(secure_server, keys):
    vista = openai.OpenAI(base_url=f"{secure_server.url}/v1", api_key=keys.vista, max_retries=0, timeout=120)
    fork = openai.OpenAI(base_url=f"{secure_server.url}/v1", api_key=keys.fork, max_retries=0, timeout=120)
    mine = vista.responses.create(input="Say hi.", temperature=0, max_output_tokens=4)
    assert vista.responses.retrieve(mine.id).output_text == mine.output_text  # stored in Redis, found again
    for call in (
        lambda: fork.responses.retrieve(mine.id),
        lambda: fork.responses.input_items.list(mine.id),
        lambda: fork.responses.delete(mine.id),
        lambda: fork.responses.create(input="Hi", previous_response_id=mine.id, max_output_tokens=4),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert vista.responses.retrieve(mine.id).id == mine.id  # fork's delete left it alone

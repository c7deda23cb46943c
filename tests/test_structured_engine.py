"""Constrained decoding and tool calls in the engine, in-process: JSON schemas, required tool calls, parsing."""

from __future__ import annotations

import json

import jsonschema
import pytest

from protocol.generation import (
    ChatMessage,
    Finished,
    GenerateRequest,
    GenerationError,
    SamplingParams,
    TextChunk,
    ToolCall,
    ToolChoice,
    ToolSpec,
)
from protocol.launch import EngineSettings
from tests.conftest import MODEL
from tests.test_engine import run
from worker.batch_engine import BatchEngine
from worker.model_loader import load_model
from worker.tool_calls import ToolCallScanner

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
WEATHER = ToolSpec(
    name="get_weather",
    description="Current weather for a city",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 24}},
        "required": ["city"],
        "additionalProperties": False,
    },
)
TIME = ToolSpec(
    name="get_time",
    description="The time now",
    parameters={"type": "object", "properties": {}, "additionalProperties": False},
)


@pytest.fixture(scope="module")
def engine(model_store):
    return BatchEngine(load_model(str(model_store / MODEL), context_length=2048), EngineSettings(decode_concurrency=4))


def ask(request_id, content, max_tokens=48, **fields):
    return GenerateRequest(
        request_id=request_id,
        messages=[ChatMessage(role="user", content=content)],
        sampling=SamplingParams(temperature=0, max_tokens=max_tokens),
        **fields,
    )


def outcome(events, request_id):
    chunks = [e for e in events if isinstance(e, TextChunk) and e.request_id == request_id]
    [end] = [e for e in events if isinstance(e, Finished | GenerationError) and e.request_id == request_id]
    return "".join(c.text for c in chunks), [t for c in chunks for t in c.tool_calls], end


def test_json_schema_output_parses_and_validates_and_plain_output_would_not(engine):
    events = run(
        engine,
        ask("schema", "Describe a person called Ann who is 31.", json_schema=PERSON),
        ask("plain", "Describe a person called Ann who is 31."),
        ask("object", 'Repeat exactly: {"ok": true}', json_schema={"type": "object"}),
    )
    text, _, end = outcome(events, "schema")
    assert end.finish_reason == "stop", text
    jsonschema.validate(json.loads(text), PERSON)
    plain, _, _ = outcome(events, "plain")
    with pytest.raises(ValueError):  # the same prompt unconstrained is prose: the constraint did the work
        json.loads(plain)
    text, _, end = outcome(events, "object")
    assert end.finish_reason == "stop", text
    assert isinstance(json.loads(text), dict)


def test_a_schema_that_cannot_be_compiled_is_refused(engine):
    events = run(engine, ask("bad", "hi", json_schema={"type": "no-such-type"}))
    _, _, end = outcome(events, "bad")
    assert isinstance(end, GenerationError) and end.code == "invalid_request"


def test_required_tool_call_is_generated_and_parsed(engine):
    events = run(
        engine,
        ask(
            "tool",
            "What is the weather in Paris?",
            tools=[WEATHER, TIME],
            tool_choice=ToolChoice(mode="required", name="get_weather"),
        ),
        ask("any", "What time is it?", tools=[WEATHER, TIME], tool_choice=ToolChoice(mode="required")),
    )
    text, calls, end = outcome(events, "tool")
    assert end.finish_reason == "tool_calls" and text.strip() == ""
    [call] = calls
    assert call.name == "get_weather" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.arguments), WEATHER.parameters)
    _, calls, end = outcome(events, "any")
    assert end.finish_reason == "tool_calls"
    assert [c.name for c in calls] in (["get_weather"], ["get_time"])


def test_tool_results_render_into_the_fallback_prompt_and_the_model_answers(engine):
    call = ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')
    request = GenerateRequest(
        request_id="after",
        messages=[
            ChatMessage(role="user", content="What is the weather in Paris?"),
            ChatMessage(role="assistant", tool_calls=[call]),
            ChatMessage(role="tool", tool_call_id="call_1", name="get_weather", content="Sunny, 24 C"),
        ],
        sampling=SamplingParams(temperature=0, max_tokens=24),
        tools=[WEATHER],
        tool_choice=ToolChoice(mode="none"),
    )
    text, calls, end = outcome(run(engine, request), "after")
    assert calls == [] and end.finish_reason in ("stop", "length") and text.strip()


class _Tokenizer:  # what ToolCallScanner reads of a tokenizer: a model without tool support of its own
    has_tool_calling = False


def test_scanner_streams_text_around_calls_and_holds_back_partial_markers():
    scanner = ToolCallScanner(_Tokenizer(), [WEATHER])
    pieces = [
        "Let me check. <to",
        'ol_call>\n{"name": "get_weather", ',
        '"arguments": {"city": "Oslo"}}\n</tool',
        "_call> done",
    ]
    outputs = [scanner.feed(p) for p in pieces]
    assert outputs[0] == ("Let me check. ", [])  # "<to" may start a marker: held back
    assert outputs[1] == ("", []) and outputs[2] == ("", [])
    text, [call] = outputs[3]
    assert text == " done" and call.name == "get_weather" and json.loads(call.arguments) == {"city": "Oslo"}
    assert scanner.flush() == ("", [])


def test_scanner_gives_back_an_unparseable_call_as_text():
    scanner = ToolCallScanner(_Tokenizer(), [WEATHER])
    assert scanner.feed("<tool_call>not json") == ("", [])
    assert scanner.flush() == ("<tool_call>not json", [])
    assert not scanner.made_calls


SCHEMAS = {
    "enum": {
        "type": "object",
        "properties": {"color": {"enum": ["red", "green", "blue"]}},
        "required": ["color"],
        "additionalProperties": False,
    },
    "array": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 2, "maxItems": 3},
    "nested": {
        "type": "object",
        "properties": {
            "city": {
                "type": "object",
                "properties": {"name": {"type": "string", "maxLength": 12}, "capital": {"type": "boolean"}},
                "required": ["name", "capital"],
                "additionalProperties": False,
            },
            "score": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "required": ["city", "score"],
        "additionalProperties": False,
    },
    "string": {"type": "string", "pattern": "^[A-Z][a-z]{2,8}$"},
}


def test_several_schemas_decoded_together_in_one_batch_all_validate(engine):
    prompts = {
        "enum": "What colour is the sky?",
        "array": "List two small numbers.",
        "nested": "Tell me about Paris.",
        "string": "Name a fruit.",
    }
    requests = [ask(name, prompts[name], json_schema=schema) for name, schema in SCHEMAS.items()]
    events = run(engine, *requests, ask("free", "Tell me about Paris."))  # and one unconstrained beside them
    for name, schema in SCHEMAS.items():
        text, _, end = outcome(events, name)
        assert end.finish_reason == "stop", (name, text)
        jsonschema.validate(json.loads(text), schema)
    assert outcome(events, "free")[0]


def test_fallback_prompt_describes_tools_writes_calls_and_results():
    from worker.tool_prompt import fallback_messages

    call = ToolCall(id="call_1", name="get_weather", arguments='{"city": "Oslo"}')
    rendered = fallback_messages(
        [
            ChatMessage(role="system", content="Be brief."),
            ChatMessage(role="user", content="Weather in Oslo?"),
            ChatMessage(role="assistant", tool_calls=[call]),
            ChatMessage(role="tool", tool_call_id="call_1", content="Rain"),
        ],
        [WEATHER],
    )
    assert [m["role"] for m in rendered] == ["system", "user", "assistant", "user"]
    assert rendered[0]["content"].startswith("Be brief.\n\n") and '"name": "get_weather"' in rendered[0]["content"]
    assert rendered[2]["content"] == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    assert rendered[3]["content"] == "<tool_response>\nRain\n</tool_response>"

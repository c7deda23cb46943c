"""Valid requests of each dialect, and one-field mutations of them sorted into classes (tests/test_fuzz.py).

A class is a kind of value for one field (a negative seed, a top_k beyond the vocabulary, an empty stop
string...) with what it must lead to: WORKER, the request reaches a worker (which answers it, or refuses it
with its own error), or EDGE, the gateway refuses it with a 400 naming the field. Values a client may send
within the API's documented types are WORKER classes even when they are hostile: the point of the test is to
deliver them to a worker and see it survive. Each class has one canonical value, run first as an explicit
example so every class is exercised, and a strategy hypothesis draws more from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

WORKER, EDGE = "reaches a worker", "refused at the edge"
DROP = object()  # as a mutation's value: the field is removed from the request


@dataclass(frozen=True)
class Mutation:
    field: str
    name: str
    expect: str  # WORKER or EDGE
    example: Any  # the canonical value, always run
    values: st.SearchStrategy
    raw: bool = False  # the value is JSON text spliced in as is (NaN, 1e999: what json.dumps cannot write)

    @property
    def label(self) -> str:
        return f"{self.field}: {self.name}"


def m(field, name, expect, example, values=None, raw=False) -> Mutation:
    return Mutation(field, name, expect, example, values if values is not None else st.just(example), raw)


QUESTION = "What is the capital of France?"
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"]}
OPENAI_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8}}, "required": ["name"]}
text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)
huge_seeds = st.integers(2**63, 2**64 - 1)
long_stop = st.text(min_size=100, max_size=512)  # msgspec counts code points, as hypothesis does
too_long_stop = st.text(min_size=513, max_size=8000)
UNICODE = "é ✓ 中文 🙂 \u202e \x00 \ufeff"  # accents, CJK, an emoji, a right-to-left override, NUL, a BOM


def sampling(temperature_max: float) -> list[Mutation]:
    """The sampling fields the three dialects share (Anthropic's temperature stops at 1)."""
    return [
        m("temperature", "zero (greedy)", WORKER, 0),
        m("temperature", "in range", WORKER, 0.7, st.floats(0.01, temperature_max)),
        m("temperature", "tiny positive", WORKER, 1e-30, st.floats(1e-300, 1e-6)),
        m("temperature", "above the range", EDGE, 50, st.floats(temperature_max + 0.001, 1e300)),
        m("temperature", "negative", EDGE, -0.5, st.floats(-1e300, -1e-9)),
        m("temperature", "beyond float (1e999)", EDGE, "1e999", raw=True),
        m("temperature", "NaN (not JSON)", EDGE, "NaN", st.sampled_from(["NaN", "Infinity", "-Infinity"]), raw=True),
        m("top_p", "in range", WORKER, 0.9, st.floats(0.05, 1.0)),
        m("top_p", "tiny positive", WORKER, 1e-30, st.floats(1e-300, 1e-6)),
        m("top_p", "zero or negative", EDGE, 0, st.floats(-1e300, 0)),
        m("top_p", "above one", EDGE, 1.5, st.floats(1.001, 1e300)),
        m("top_k", "small", WORKER, 1, st.integers(1, 100)),
        # The gateway knows the vocabulary size (49,152) from the worker's Ready, through the supervisor.
        m("top_k", "vocabulary-sized and beyond", EDGE, 10**9, st.integers(49_152, 2**80)),
        m("top_k", "negative", EDGE, -1, st.integers(-(2**62), -1)),
    ]


def openai_shared() -> list[Mutation]:
    return [
        m("seed", "zero", WORKER, 0),
        m("seed", "positive int64", WORKER, 1234, st.integers(1, 2**63 - 1)),
        m("seed", "negative", EDGE, -1, st.integers(-(2**63), -1)),
        m("seed", "above int64, within uint64", EDGE, 2**64 - 1, huge_seeds),
        m("seed", "beyond 64 bits", EDGE, 2**64, st.integers(2**64, 2**80)),
        m("min_p", "in range", WORKER, 0.1, st.floats(0, 1)),
        m("min_p", "outside [0, 1]", EDGE, 2, st.floats(1.001, 1e300) | st.floats(-1e300, -1e-9)),
        m("repetition_penalty", "usual", WORKER, 1.2, st.floats(0.5, 2)),
        m("repetition_penalty", "huge", WORKER, 1e30, st.floats(1e6, 1e300)),
        m("repetition_penalty", "tiny positive", WORKER, 1e-30, st.floats(1e-300, 1e-6)),
        m("repetition_penalty", "zero or negative", EDGE, 0, st.floats(-1e300, 0)),
        m("max_tokens", "one", WORKER, 1),
        m("max_tokens", "beyond the context", WORKER, 10**6, st.integers(2_049, 2**31 - 1)),
        m("max_tokens", "zero or negative", EDGE, 0, st.integers(-(2**62), 0)),
        m("max_tokens", "above 2^31-1, to beyond 64 bits", EDGE, 2**70, st.integers(2**31, 2**80)),
        m("stop", "a string", WORKER, ".", text.filter(bool)),
        m("stop", "empty string", WORKER, [""], st.lists(st.just(""), min_size=1, max_size=4)),
        m("stop", "up to four", WORKER, ["\n", " Paris"], st.lists(text, max_size=4)),
        m("stop", "long", WORKER, ["x" * 512], st.lists(long_stop, min_size=1, max_size=2)),
        m("stop", "longer than 512 characters", EDGE, ["x" * 5000], st.lists(too_long_stop, min_size=1, max_size=2)),
        m("stop", "more than four", EDGE, ["a", "b", "c", "d", "e"], st.lists(text, min_size=5, max_size=50)),
        m("n", "two or more", EDGE, 2, st.integers(2, 2**62)),
        *sampling(2.0),
    ]


def chat_mutations() -> list[Mutation]:
    return [
        *openai_shared(),
        m("max_completion_tokens", "small", WORKER, 2, st.integers(1, 3)),
        m("logprobs", "with top_logprobs", WORKER, (True, 2), st.tuples(st.just(True), st.integers(0, 10))),
        m("logprobs", "top_logprobs above 10", EDGE, (True, 11), st.tuples(st.just(True), st.integers(11, 2**62))),
        m("logprobs", "top_logprobs without logprobs", EDGE, (False, 3), st.tuples(st.just(False), st.integers(1, 10))),
        m("tools", "a tool, auto", WORKER, "auto"),
        m("tools", "a tool, none", WORKER, "none"),
        m("tools", "a tool, required", WORKER, "required"),
        m("tools", "a tool, named", WORKER, "named"),
        m("tools", "required with an uncompilable schema", WORKER, "broken"),
        m("tools", "required without tools", EDGE, "required-alone"),
        m("tools", "an invalid tool name", EDGE, "bad-name"),
        m("response_format", "json_object", WORKER, {"type": "json_object"}),
        m(
            "response_format",
            "json_schema",
            WORKER,
            {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}},
        ),
        m(
            "response_format",
            "an uncompilable schema",
            WORKER,
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}},
        ),
        m("response_format", "unknown type", EDGE, {"type": "yaml"}),
        m("messages", "system and user", WORKER, "system"),
        m("messages", "a multi-turn conversation", WORKER, "turns"),
        m("messages", "text parts", WORKER, "parts"),
        m("messages", "an empty content", WORKER, "empty"),
        m("messages", "ending with the assistant", WORKER, "assistant-last"),
        m("messages", "a tool exchange", WORKER, "tool-exchange"),
        m("messages", "any unicode", WORKER, UNICODE, text),
        m("messages", "longer than the context", WORKER, "too-long"),
        m("messages", "an image whose base64 holds a non-ASCII character", EDGE, "non-ascii-image"),
        m("messages", "empty list", EDGE, "none"),
        m("messages", "an unknown role", EDGE, "wizard"),
    ]


def completion_mutations() -> list[Mutation]:
    return [
        *openai_shared(),
        m("prompt", "a list of one", WORKER, [QUESTION]),
        m("prompt", "any unicode", WORKER, UNICODE, text.filter(str.strip)),
        m("prompt", "longer than the context", WORKER, "word " * 3000),
        m("prompt", "empty", EDGE, ""),
        m("prompt", "several prompts", EDGE, ["a", "b"]),
        m("echo", "true", WORKER, True),
    ]


def messages_mutations() -> list[Mutation]:
    return [
        *sampling(1.0),
        m("max_tokens", "one", WORKER, 1),
        m("max_tokens", "beyond the context", WORKER, 10**6, st.integers(2_049, 2**31 - 1)),
        m("max_tokens", "zero or negative", EDGE, 0, st.integers(-(2**62), 0)),
        m("max_tokens", "above 2^31-1, to beyond 64 bits", EDGE, 2**70, st.integers(2**31, 2**80)),
        m("max_tokens", "missing", EDGE, DROP),
        m("stop_sequences", "a few", WORKER, ["\n", " Paris"], st.lists(text, max_size=4)),
        m("stop_sequences", "empty string", WORKER, [""]),
        m("stop_sequences", "many", WORKER, [f"s{i}" for i in range(64)], st.lists(text, min_size=5, max_size=64)),
        m("stop_sequences", "more than 64", EDGE, [f"s{i}" for i in range(65)], st.lists(text, min_size=65)),
        m("stop_sequences", "long", WORKER, ["x" * 512], st.lists(long_stop, min_size=1, max_size=2)),
        m("stop_sequences", "longer than 512", EDGE, ["x" * 5000], st.lists(too_long_stop, min_size=1, max_size=2)),
        m("system", "a string", WORKER, "Answer in one word.", text),
        m("system", "text blocks", WORKER, [{"type": "text", "text": "Be brief."}]),
        m("tools", "a tool, auto", WORKER, "auto"),
        m("tools", "a tool, any", WORKER, "any"),
        m("tools", "a tool, named", WORKER, "tool"),
        m("tools", "a tool, none", WORKER, "none"),
        m("tools", "any without tools", EDGE, "any-alone"),
        m("output_config", "a JSON schema", WORKER, {"format": {"type": "json_schema", "schema": PERSON}}),
        m("messages", "text blocks", WORKER, "blocks"),
        m("messages", "a tool_use and its result", WORKER, "tool-exchange"),
        m("messages", "ending with the assistant", WORKER, "assistant-last"),
        m("messages", "any unicode", WORKER, UNICODE, text),
        m("messages", "longer than the context", WORKER, "too-long"),
        m("messages", "an image whose base64 holds a non-ASCII character", EDGE, "non-ascii-image"),
        m("messages", "an empty content list", EDGE, "no-blocks"),
        m("messages", "an unknown role", EDGE, "wizard"),
    ]

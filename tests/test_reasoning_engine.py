"""Reasoning in the engine, in-process: thinking split from the answer on the token stream, a thinking budget
that forces the end marker, a JSON schema that shapes the answer and not the thinking, thinking turned off
through the template; and the waiting queue's priorities (batch lines wait behind interactive requests)."""

from __future__ import annotations

import json

import pytest

from protocol.generation import ChatMessage, Finished, GenerateRequest, SamplingParams, TextChunk
from protocol.launch import EngineSettings
from tests.conftest import THINKER
from tests.test_engine import run
from worker.batch_engine import BatchEngine
from worker.model_loader import load_model
from worker.reasoning import ANSWER, THINKING, ReasoningFormat, ReasoningSplit

PARIS = [ChatMessage(role="user", content="What is the capital of France?")]
CAPITAL = {"type": "object", "properties": {"capital": {"type": "string"}}, "required": ["capital"]}
FORMAT = ReasoningFormat("<think>", "</think>", (1, 2, 3), None)


@pytest.fixture(scope="module")
def loaded(model_store):
    return load_model(str(model_store / THINKER), context_length=2048)


def ask(request_id: str, max_tokens: int = 20, **fields) -> GenerateRequest:
    return GenerateRequest(
        request_id=request_id, messages=PARIS, sampling=SamplingParams(temperature=0, max_tokens=max_tokens), **fields
    )


def parts(events, request_id) -> tuple[str, str, Finished]:
    chunks = [e for e in events if isinstance(e, TextChunk) and e.request_id == request_id]
    [end] = [e for e in events if isinstance(e, Finished) and e.request_id == request_id]
    return "".join(c.reasoning for c in chunks), "".join(c.text for c in chunks), end


def test_thinking_and_answer_arrive_apart_and_the_budget_closes_the_thinking(loaded):
    engine = BatchEngine(loaded, EngineSettings())
    events = run(
        engine, ask("free"), ask("budget", reasoning_budget=5), ask("json", reasoning_budget=8, json_schema=CAPITAL)
    )
    thought, answer, end = parts(events, "free")
    assert "Paris" in thought and answer == ""  # SmolLM2 never closes the block it was given
    assert end.usage.reasoning_tokens == end.usage.completion_tokens
    thought, answer, end = parts(events, "budget")
    assert thought and answer and "<think>" not in thought + answer and "</think>" not in thought + answer
    assert 5 <= end.usage.reasoning_tokens < end.usage.completion_tokens
    thought, answer, end = parts(events, "json")
    assert thought and json.loads(answer)["capital"]  # the schema shaped the answer, not the thinking


def test_thinking_turned_off_through_the_template_leaves_only_the_answer(loaded):
    engine = BatchEngine(loaded, EngineSettings())
    events = run(engine, ask("off", chat_template_kwargs={"enable_thinking": False}))
    thought, answer, end = parts(events, "off")
    assert thought == "" and "Paris" in answer and answer == answer.lstrip()
    assert end.usage.reasoning_tokens == 0


def test_a_raw_prompt_is_never_split(loaded):
    engine = BatchEngine(loaded, EngineSettings())
    raw = GenerateRequest(
        request_id="raw", prompt="<think>\nParis is", sampling=SamplingParams(temperature=0, max_tokens=4)
    )
    thought, answer, _ = parts(run(engine, raw), "raw")
    assert thought == "" and answer  # no template opened that block: the text is all answer


def test_the_split_holds_back_partial_markers_and_trims_the_edges():
    split = ReasoningSplit(FORMAT, THINKING)
    out = [split.feed(t) for t in ["\nLet me", " think. ", "</thi", "nk>", "\n\nThe answer", " is 4."]]
    thought = "".join(t for t, _ in out)
    answer = "".join(a for _, a in out)
    assert thought == "Let me think." and answer == "The answer is 4."
    assert out[2] == ("", "")  # "</thi" might be the marker: nothing of it goes out yet
    opened = ReasoningSplit(FORMAT, None)  # the model opens a block itself
    out = [opened.feed(t) for t in ["<think>", "hmm", "</think>", "ok"]]
    assert ("".join(t for t, _ in out), "".join(a for _, a in out)) == ("hmm", "ok")
    closed = ReasoningSplit(FORMAT, ANSWER)  # the template closed the block: the answer's first newlines go
    assert closed.feed("\n\nHi") == ("", "Hi")
    cut = ReasoningSplit(FORMAT, THINKING)
    assert cut.feed("abc </th") == ("abc", "") and cut.flush() == (" </th", "")  # cut off by max_tokens


def test_interactive_requests_are_admitted_before_waiting_batch_lines(loaded):
    engine = BatchEngine(loaded, EngineSettings(decode_concurrency=1))
    order: list[str] = []

    def emit(event):
        if isinstance(event, TextChunk) and event.request_id not in order:
            order.append(event.request_id)

    def line(request_id: str, priority: int) -> GenerateRequest:
        return GenerateRequest(
            request_id=request_id,
            prompt="1, 2, 3,",
            sampling=SamplingParams(temperature=0, max_tokens=2),
            priority=priority,
        )

    for request in (line("batch-1", -1), line("batch-2", -1), line("batch-3", -1)):
        engine.submit(request)
    engine.step(emit)  # batch-1 starts
    engine.submit(line("interactive", 0))
    while engine.busy:
        engine.step(emit)
    assert order == ["batch-1", "interactive", "batch-2", "batch-3"]

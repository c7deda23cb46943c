"""The generation engine in-process: the same code the worker runs on its generation thread."""

from __future__ import annotations

import pytest

from protocol.generation import ChatMessage, Finished, GenerateRequest, GenerationError, SamplingParams, TextChunk
from tests.conftest import MODEL
from worker.engine import Engine
from worker.model_loader import load_model


@pytest.fixture(scope="module")
def engine(model_store):
    return Engine(load_model(str(model_store / MODEL), context_length=512))


def run(engine, *requests):
    events = []
    for request in requests:
        engine.submit(request)
    while engine.busy:
        engine.step(events.append)
    return events


def chat(request_id, content, **sampling):
    return GenerateRequest(
        request_id=request_id,
        messages=[ChatMessage(role="user", content=content)],
        sampling=SamplingParams(**sampling),
    )


def test_greedy_answer_streams_then_finishes(engine):
    events = run(engine, chat("a", "What is the capital of France?", temperature=0, max_tokens=16))
    chunks = [e for e in events if isinstance(e, TextChunk)]
    assert "Paris" in "".join(c.text for c in chunks)
    assert [c.completion_tokens for c in chunks] == sorted(c.completion_tokens for c in chunks)
    assert isinstance(events[-1], Finished) and events[-1].usage.prompt_tokens > 10


def test_requests_queue_in_order_and_each_gets_its_own_answer(engine):
    events = run(
        engine,
        chat("x", "What is the capital of France?", temperature=0, max_tokens=12),
        GenerateRequest(request_id="y", prompt="1, 2, 3, 4,", sampling=SamplingParams(temperature=0, max_tokens=4)),
    )
    finished = [e.request_id for e in events if isinstance(e, Finished)]
    assert finished == ["x", "y"]
    y_text = "".join(e.text for e in events if isinstance(e, TextChunk) and e.request_id == "y")
    assert "5" in y_text


def test_abort_drops_the_running_request_at_once(engine):
    events = []
    engine.submit(chat("long", "Tell me a story.", temperature=0, max_tokens=200))
    engine.step(events.append)  # prefill + first token
    assert engine.in_flight == 1
    assert engine.abort("long", events.append)
    assert not engine.busy
    assert isinstance(events[-1], GenerationError) and events[-1].code == "aborted"
    assert not engine.abort("long", events.append)  # already gone


def test_over_long_requests_are_rejected_before_any_work(engine):
    [event] = run(engine, chat("big", "hi", max_tokens=10_000))
    assert isinstance(event, GenerationError) and event.code == "context_length_exceeded"
    [event] = run(engine, GenerateRequest(request_id="both", prompt="x", messages=[]))
    assert isinstance(event, GenerationError) and event.code == "invalid_request"

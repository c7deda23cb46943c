"""The batching engine in-process: the same code the worker runs on its generation thread."""

from __future__ import annotations

import math

import pytest

from protocol.generation import ChatMessage, Finished, GenerateRequest, GenerationError, SamplingParams, TextChunk
from protocol.launch import EngineSettings
from tests.conftest import MODEL
from worker.backends import Engine
from worker.batch_engine import BatchEngine
from worker.model_loader import load_model

PARIS = "What is the capital of France?"
# A long shared prefix (a system prompt of a few hundred tokens), as chat services send on every request.
SYSTEM = "You are a helpful assistant for a travel agency. " + " ".join(
    f"Rule {i}: answer briefly and politely, and never invent facts about place number {i}." for i in range(30)
)


@pytest.fixture(scope="module")
def loaded(model_store):
    return load_model(str(model_store / MODEL), context_length=2048)


@pytest.fixture
def engine(loaded):
    engine = BatchEngine(loaded, EngineSettings(decode_concurrency=8, prefill_step_size=128))
    assert isinstance(engine, Engine)
    return engine


def run(engine, *requests):
    events = []
    for request in requests:
        engine.submit(request)
    while engine.busy:
        engine.step(events.append)
    return events


def chat(request_id, content, system=None, **sampling):
    messages = [ChatMessage(role="system", content=system)] if system else []
    return GenerateRequest(
        request_id=request_id,
        messages=[*messages, ChatMessage(role="user", content=content)],
        sampling=SamplingParams(**sampling),
    )


def text_of(events, request_id):
    return "".join(e.text for e in events if isinstance(e, TextChunk) and e.request_id == request_id)


def finished(events, request_id) -> Finished:
    [event] = [e for e in events if isinstance(e, Finished) and e.request_id == request_id]
    return event


def test_greedy_answer_streams_then_finishes(engine):
    events = run(engine, chat("a", PARIS, temperature=0, max_tokens=16))
    chunks = [e for e in events if isinstance(e, TextChunk)]
    assert "Paris" in "".join(c.text for c in chunks)
    assert [c.completion_tokens for c in chunks] == sorted(c.completion_tokens for c in chunks)
    assert isinstance(events[-1], Finished) and events[-1].usage.prompt_tokens > 10


def test_requests_in_one_batch_each_get_their_own_answer(engine):
    events = run(
        engine,
        chat("x", PARIS, temperature=0, max_tokens=12),
        GenerateRequest(request_id="y", prompt="1, 2, 3, 4,", sampling=SamplingParams(temperature=0, max_tokens=4)),
        chat("z", "Name a colour.", temperature=0.8, top_k=20, min_p=0.05, repetition_penalty=1.2, max_tokens=8),
    )
    assert "Paris" in text_of(events, "x")
    assert "5" in text_of(events, "y")
    assert finished(events, "y").usage.completion_tokens == 4
    assert finished(events, "z").usage.completion_tokens <= 8
    assert not [e for e in events if isinstance(e, GenerationError)]


def test_abort_frees_the_slot_for_the_next_request_at_once(loaded):
    engine = BatchEngine(loaded, EngineSettings(decode_concurrency=1))
    events = []
    engine.submit(chat("long", "Tell me a story.", temperature=0, max_tokens=500))
    engine.submit(GenerateRequest(request_id="next", prompt="1, 2, 3,", sampling=SamplingParams(max_tokens=2)))
    while not any(isinstance(e, TextChunk) for e in events):
        engine.step(events.append)
    assert (engine.in_flight, engine.queued) == (1, 1)  # the one slot is taken: "next" waits
    assert engine.abort("long", events.append)
    assert isinstance(events[-1], GenerationError) and events[-1].code == "aborted"
    assert engine.cache_bytes()[0] == 0  # its KV cache is gone from the batch
    for _ in range(4):  # admitted on the very next step: prefill, then two tokens (the batch runs a step ahead)
        engine.step(events.append)
    assert finished(events, "next").usage.completion_tokens == 2  # within 4 steps, not after 500 of "long"
    assert not engine.busy
    assert not engine.abort("long", events.append)  # already gone
    assert not [e for e in events if isinstance(e, Finished) and e.request_id == "long"]


def test_a_shared_prefix_is_served_from_the_prompt_cache(engine):
    first = run(engine, chat("first", "Where is Rome?", system=SYSTEM, temperature=0, max_tokens=4))
    second = run(engine, chat("second", "Where is Oslo?", system=SYSTEM, temperature=0, max_tokens=4))
    cold, warm = finished(first, "first").usage, finished(second, "second").usage
    assert cold.cached_tokens == 0
    assert cold.prompt_tokens > 300
    assert 300 < warm.cached_tokens < warm.prompt_tokens
    assert engine.cache_bytes()[1] > 0


def test_logprobs_are_finite_negatives_with_ranked_alternatives(engine):
    events = run(engine, chat("lp", PARIS, temperature=0, max_tokens=6, logprobs=True, top_logprobs=3))
    entries = [entry for e in events if isinstance(e, TextChunk) for entry in e.logprobs]
    assert len(entries) == finished(events, "lp").usage.completion_tokens
    for entry in entries:
        assert math.isfinite(entry.logprob) and entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        ranked = [t.logprob for t in entry.top_logprobs]
        assert ranked == sorted(ranked, reverse=True)
        assert entry.top_logprobs[0].token == entry.token  # greedy: the chosen token ranks first
    assert "".join(e.token for e in entries) == text_of(events, "lp")


def test_a_seeded_request_repeats_inside_a_batch(engine):
    seeded = dict(temperature=1.0, top_p=0.95, seed=7, max_tokens=10)
    alone = run(engine, chat("s1", "Write a word.", **seeded))
    crowded = run(
        engine,
        chat("other", "Tell me a joke.", temperature=1.0, max_tokens=10),
        chat("s2", "Write a word.", **seeded),
    )
    assert text_of(alone, "s1") == text_of(crowded, "s2")


def test_stop_sequences_end_a_sequence_early(engine):
    events = run(engine, chat("st", PARIS, temperature=0, max_tokens=16, stop=[" Paris"]))
    assert finished(events, "st").finish_reason == "stop"
    assert "Paris" not in text_of(events, "st")


def test_over_long_requests_are_rejected_before_any_work(engine):
    [event] = run(engine, chat("big", "hi", max_tokens=10_000))
    assert isinstance(event, GenerationError) and event.code == "context_length_exceeded"
    [event] = run(engine, GenerateRequest(request_id="both", prompt="x", messages=[]))
    assert isinstance(event, GenerationError) and event.code == "invalid_request"

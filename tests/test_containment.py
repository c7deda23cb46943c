"""Containment in-process: a request that fails anywhere in the worker ends alone. In a batch of eight where
one is made to fail (its settings, its sampler, a logits processor, a token callback), the other seven finish
with the text they produce alone, and the engine serves the next request."""

from __future__ import annotations

import dataclasses
import logging
import sys
from dataclasses import dataclass

import httpx
import msgspec
import pytest

import worker.batch_engine
import worker.sequence
from protocol.generation import Finished, GenerateRequest, GenerationError, SamplingParams, ToolSpec
from protocol.launch import EngineSettings, LlamaCppSettings
from supervisor.bundled import bundled_path
from tests.conftest import MODEL, VLM
from tests.test_engine import PARIS, chat, finished, run, text_of
from tests.test_failures import STORY, _model
from tests.test_worker_backends import look
from worker.backends import ModelToLoad, load_engine
from worker.batch_engine import BatchEngine
from worker.model_loader import load_model
from worker.stop_matcher import StopMatcher
from worker.tool_calls import ToolCallScanner

QUESTIONS = [
    "Name a colour.",
    "Count to five.",
    "What is 2 + 2?",
    "Say hello.",
    "Name a fruit.",
    "What is the largest ocean?",
    "Name a planet.",
]
GREEDY = dict(temperature=0, max_tokens=8)


def bystanders() -> list[GenerateRequest]:
    return [chat(f"bystander-{i}", q, **GREEDY) for i, q in enumerate(QUESTIONS)]


@pytest.fixture(scope="module")
def loaded(model_store):
    return load_model(str(model_store / MODEL), context_length=2048)


@pytest.fixture(scope="module")
def alone(loaded) -> dict[str, str]:
    """What each bystander says when it has the engine to itself (greedy, so it must say the same in a batch)."""
    engine = BatchEngine(loaded, EngineSettings(decode_concurrency=8))
    return {r.request_id: text_of(run(engine, r), r.request_id) for r in bystanders()}


class Exploding:
    """Raises on its `after`-th call, as a broken tool parser, stop matcher or logits processor would."""

    def __init__(self, after: int):
        self.calls, self.after = 0, after

    def tick(self) -> None:
        self.calls += 1
        if self.calls >= self.after:
            raise RuntimeError("boom from a hostile request")


@dataclass
class Case:
    culprit: GenerateRequest
    code: str
    says: str  # in the client's message


def bad_seed(monkeypatch) -> Case:
    return Case(chat("culprit", PARIS, temperature=0.7, seed=-1, max_tokens=8), "invalid_request", "seed")


def huge_top_k(monkeypatch) -> Case:
    return Case(chat("culprit", PARIS, temperature=0.7, top_k=10**9, max_tokens=8), "invalid_request", "top_k")


def sampler_fails_mid_batch(monkeypatch) -> Case:
    """Without the settings check, top_k reaches mlx-lm's sampler, which raises inside the batch step."""
    monkeypatch.setattr(worker.batch_engine, "check_sampling", lambda params, vocab: None)
    culprit = chat("culprit", PARIS, temperature=0.7, top_k=10**9, max_tokens=8)
    return Case(culprit, "internal_error", "sampling its next token")


def logits_processor_fails(monkeypatch) -> Case:
    original = worker.batch_engine.logits_processors_for
    bomb = Exploding(after=3)

    def processors_for(params):
        if params.repetition_penalty != 1.5:
            return original(params)

        def processor(tokens, logits):
            bomb.tick()
            return logits

        return [processor]

    monkeypatch.setattr(worker.batch_engine, "logits_processors_for", processors_for)
    culprit = chat("culprit", PARIS, repetition_penalty=1.5, **GREEDY)
    return Case(culprit, "internal_error", "logits processors")


def tool_parser_fails(monkeypatch) -> Case:
    bomb = Exploding(after=3)

    class HostileScanner(ToolCallScanner):
        def feed(self, text):
            bomb.tick()
            return super().feed(text)

    monkeypatch.setattr(worker.batch_engine, "ToolCallScanner", HostileScanner)
    tool = ToolSpec(name="get_weather", parameters={"type": "object", "properties": {"city": {"type": "string"}}})
    culprit = msgspec.structs.replace(chat("culprit", PARIS, **GREEDY), tools=[tool])
    return Case(culprit, "internal_error", "handling its generated tokens")


def stop_matcher_fails(monkeypatch) -> Case:
    bomb = Exploding(after=2)

    class HostileMatcher(StopMatcher):
        def feed(self, segment):
            if "BOOM" in self._stops:
                bomb.tick()
            return super().feed(segment)

    monkeypatch.setattr(worker.sequence, "StopMatcher", HostileMatcher)
    culprit = chat("culprit", PARIS, stop=["BOOM"], **GREEDY)
    return Case(culprit, "internal_error", "handling its generated tokens")


CASES = [bad_seed, huge_top_k, sampler_fails_mid_batch, logits_processor_fails, tool_parser_fails, stop_matcher_fails]


@pytest.mark.parametrize("make_case", CASES, ids=lambda f: f.__name__)
def test_one_failing_sequence_ends_alone_and_the_seven_others_finish(loaded, alone, make_case, monkeypatch, caplog):
    case = make_case(monkeypatch)
    engine = BatchEngine(loaded, EngineSettings(decode_concurrency=8))
    others = bystanders()
    with caplog.at_level(logging.INFO, logger="worker"):
        events = run(engine, *others[:3], case.culprit, *others[3:])

    [ending] = [e for e in events if e.request_id == "culprit" and isinstance(e, Finished | GenerationError)]
    assert isinstance(ending, GenerationError) and ending.code == case.code, ending
    assert case.says in ending.message
    assert events.index(ending) == max(i for i, e in enumerate(events) if e.request_id == "culprit")
    if case.code == "internal_error":  # the exception goes to the worker log with the request id, not the client
        assert "boom" not in ending.message and "has to be" not in ending.message
        logged = [r for r in caplog.records if r.levelno == logging.ERROR and "culprit" in r.getMessage()]
        assert logged and logged[0].exc_info is not None

    for request in others:
        assert finished(events, request.request_id).finish_reason == "length"
        assert text_of(events, request.request_id) == alone[request.request_id]
    assert not engine.busy and engine.cache_bytes()[0] == 0  # the culprit's KV cache left with it
    ninth = run(engine, chat("ninth", PARIS, **GREEDY))
    assert "Paris" in text_of(ninth, "ninth")
    # Sampling without a seed draws from MLX's global random state, which a sampler failing while traced broke.
    tenth = run(engine, chat("tenth", PARIS, temperature=0.7, max_tokens=4))
    assert finished(tenth, "tenth").finish_reason == "length"


@pytest.mark.parametrize("make_case", [sampler_fails_mid_batch, stop_matcher_fails], ids=lambda f: f.__name__)
def test_a_failing_speculative_request_ends_alone(loaded, alone, make_case, monkeypatch):
    case = make_case(monkeypatch)
    engine = BatchEngine(dataclasses.replace(loaded, draft_model=loaded.model), EngineSettings(num_draft_tokens=2))
    [ending] = [e for e in run(engine, case.culprit) if isinstance(e, Finished | GenerationError)]
    assert isinstance(ending, GenerationError) and ending.code == case.code
    assert not engine.busy
    [request] = bystanders()[:1]
    assert text_of(run(engine, request), request.request_id) == alone[request.request_id]


def test_a_full_queue_refuses_instead_of_growing(loaded):
    engine = BatchEngine(loaded, EngineSettings(max_waiting=2))
    assert engine.submit(chat("a", PARIS)) and engine.submit(chat("b", PARIS))
    assert not engine.submit(chat("c", PARIS))
    assert engine.queued == 2


@pytest.mark.needs_tool("llama-server")
def test_a_gguf_request_that_fails_ends_alone_and_a_full_queue_refuses():
    model = ModelToLoad(str(bundled_path(MODEL)), "gguf", 256, llama_cpp=LlamaCppSettings(parallel=1))
    engine, _ = load_engine(model, EngineSettings(max_waiting=2))
    try:
        hostile_seed = chat("bad-seed", PARIS, temperature=0.7, seed=-1, max_tokens=4)
        assert engine.submit(hostile_seed) and engine.submit(chat("after", PARIS, **GREEDY))
        assert not engine.submit(chat("refused", PARIS))  # two waiting for the one slot: the queue is full
        events = []
        while engine.busy:
            engine.step(events.append)
        codes = {e.request_id: e.code for e in events if isinstance(e, GenerationError)}
        assert codes == {"bad-seed": "invalid_request"}
        assert finished(events, "after").usage.completion_tokens > 0
    finally:
        engine.close()


@pytest.fixture(scope="module")
def vision(model_store):
    engine, _ = load_engine(ModelToLoad(str(model_store / VLM), "vlm", 256), EngineSettings())
    return engine


def test_a_vision_request_that_fails_ends_alone(vision, monkeypatch):
    dispatch = sys.modules["mlx_vlm.generate.dispatch"]
    bomb, prepare_inputs = Exploding(after=1), dispatch.prepare_inputs

    def processor_that_fails_once(*args, **kwargs):  # the first image that reaches mlx-vlm's processor
        if bomb.calls < bomb.after:
            bomb.tick()
        return prepare_inputs(*args, **kwargs)

    monkeypatch.setattr(dispatch, "prepare_inputs", processor_that_fails_once)
    hostile_seed = look("bad-seed", sampling=SamplingParams(seed=-1, temperature=0.5, max_tokens=4))
    events = []
    for request in (hostile_seed, look("broken"), look("after", max_tokens=4)):
        vision.submit(request)
    while vision.busy:
        vision.step(events.append)
    codes = {e.request_id: e.code for e in events if isinstance(e, GenerationError)}
    assert codes == {"bad-seed": "invalid_request", "broken": "internal_error"}
    assert finished(events, "after").usage.completion_tokens == 4


def test_hostile_requests_through_the_server_end_alone_and_the_worker_stays(server, client):
    client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": PARIS}], max_tokens=1)
    pid = _model(server).pid
    body = {"model": "smollm2", "messages": STORY, "temperature": 0, "max_tokens": 32, "stream": True}
    question = [{"role": "user", "content": PARIS}]
    hostile = [
        ("/v1/chat/completions", {"model": "smollm2", "messages": question, "seed": -1, "temperature": 0.7}, "seed"),
        ("/v1/completions", {"model": "smollm2", "prompt": PARIS, "top_k": 10**9, "temperature": 0.7}, "top_k"),
        ("/v1/messages", {"model": "claude-haiku-4-5", "messages": question, "top_k": 10**9, "max_tokens": 4}, "top_k"),
    ]
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=180) as stream:
        for line in (lines := stream.iter_lines()):
            if line.startswith('data: {"id"'):
                break  # streaming: now the hostile requests arrive at the same worker
        for path, request, field in hostile:
            reply = httpx.post(f"{server.url}{path}", json={"max_tokens": 4} | request, timeout=120)
            assert reply.status_code == 400, reply.text
            error = reply.json()["error"]
            assert field in error["message"]
            assert error.get("code", "invalid_request") == "invalid_request"  # Anthropic's shape has no code
            assert error.get("param", field) == field  # nor a param
        rest = list(lines)
    assert "data: [DONE]" in rest and not any('"error"' in line for line in rest)
    assert _model(server).pid == pid  # the same worker served it all

"""Speculative decoding: a request alone on a model with a draft is decoded speculatively, produces what the
model alone produces, and moves into the batch without a seam when another request arrives."""

from __future__ import annotations

import dataclasses
import json
import re
import uuid

import pytest

from protocol.generation import ChatMessage, GenerateRequest, GenerationError, SamplingParams
from protocol.launch import EngineSettings
from tests.conftest import MODEL
from tests.harness import wait_until
from tests.test_engine import PARIS, SYSTEM, chat, finished, run, text_of
from worker.batch_engine import BatchEngine
from worker.model_loader import load_model


@pytest.fixture(scope="module")
def loaded(model_store):
    return load_model(str(model_store / MODEL), context_length=2048)


def engines(loaded, **options):
    """(plain, speculative) engines over the same weights; the draft is the model itself, so under greedy
    decoding it should almost always be right: what differs is only how many tokens one pass yields."""
    options = EngineSettings(decode_concurrency=8, prefill_step_size=128, **options)
    return BatchEngine(loaded, options), BatchEngine(dataclasses.replace(loaded, draft_model=loaded.model), options)


def test_a_single_stream_is_decoded_speculatively_with_the_same_output(loaded):
    plain, speculative = engines(loaded, num_draft_tokens=3)
    request = dict(content=PARIS, temperature=0, max_tokens=24)
    expected = run(plain, chat("p", **request))
    events = run(speculative, chat("s", **request))
    assert text_of(events, "s") == text_of(expected, "p")
    assert "Paris" in text_of(events, "s")
    done = finished(events, "s")
    assert done.usage.completion_tokens == finished(expected, "p").usage.completion_tokens
    assert done.draft_accepted_tokens >= done.usage.completion_tokens // 2
    assert finished(expected, "p").draft_accepted_tokens == 0
    assert not speculative.busy and speculative.cache_bytes()[0] == 0


def test_a_second_request_moves_the_speculative_one_into_the_batch(loaded):
    plain, speculative = engines(loaded, num_draft_tokens=2)
    first = dict(content="Name three colours of the rainbow.", temperature=0, max_tokens=24)
    second = dict(content=PARIS, temperature=0, max_tokens=12)
    alone = run(plain, chat("a", **first), chat("b", **second))

    events = []
    speculative.submit(chat("a", **first))
    speculative.step(events.append)  # the prompt and a first round, speculatively
    speculative.step(events.append)
    assert speculative.in_flight == 1 and finished_count(events) == 0
    speculative.submit(chat("b", **second))
    while speculative.busy:
        speculative.step(events.append)
    assert text_of(events, "a") == text_of(alone, "a")
    assert text_of(events, "b") == text_of(alone, "b")
    assert finished(events, "a").usage.completion_tokens == finished(alone, "a").usage.completion_tokens
    assert finished(events, "a").draft_accepted_tokens > 0


def test_a_speculative_request_reuses_and_fills_the_prompt_cache(loaded):
    plain, speculative = engines(loaded)
    run(speculative, chat("warm", "Hello!", system=SYSTEM, temperature=0, max_tokens=8))
    events = run(speculative, chat("again", PARIS, system=SYSTEM, temperature=0, max_tokens=8))
    assert finished(events, "again").usage.cached_tokens > 100
    alone = run(plain, chat("cold", PARIS, system=SYSTEM, temperature=0, max_tokens=8))
    assert text_of(events, "again") == text_of(alone, "cold")  # the cached prefix changes nothing in the output
    assert finished(events, "again").draft_accepted_tokens > 0


def test_an_aborted_speculative_request_leaves_at_once(loaded):
    _, speculative = engines(loaded)
    events = []
    speculative.submit(chat("x", PARIS, temperature=0, max_tokens=200))
    speculative.step(events.append)
    assert speculative.abort("x", events.append)
    assert not speculative.busy and speculative.in_flight == 0
    assert isinstance(events[-1], GenerationError) and events[-1].code == "aborted"
    events = run(speculative, chat("y", PARIS, temperature=0, max_tokens=8))
    assert "Paris" in text_of(events, "y")


def finished_count(events) -> int:
    return sum(1 for e in events if type(e).__name__ == "Finished")


def test_the_server_decodes_with_a_configured_draft(client, server):
    """`spec` is the bundled model with itself as draft (conftest): the same answer through the server, most of
    its tokens accepted from the draft, as the worker's log line for the request says."""
    ask = dict(messages=[{"role": "user", "content": PARIS}], temperature=0, max_tokens=16)
    plain = client.chat.completions.create(model="smollm2", **ask, extra_headers={"X-Request-ID": "plain-16"})
    trace = f"spec-{uuid.uuid4().hex[:8]}"
    drafted = client.chat.completions.create(model="spec", **ask, extra_headers={"X-Request-ID": trace})
    assert drafted.choices[0].message.content == plain.choices[0].message.content
    assert "Paris" in drafted.choices[0].message.content
    line = rf"\[x-request-id {trace}\] finished .* (\d+) generated .*, (\d+) of them accepted from the draft"
    pattern = re.compile(line)
    assert wait_until(lambda: pattern.search(server.log_text()), timeout=30), "no draft tokens logged for the request"
    generated, accepted = map(int, pattern.search(server.log_text()).groups())
    assert generated == drafted.usage.completion_tokens
    assert accepted >= generated // 2  # the draft is the model itself: under greedy decoding it is mostly right
    assert "[x-request-id plain-16] finished" in server.log_text()
    assert not re.search(r"\[x-request-id plain-16\] finished .*accepted from the draft", server.log_text())


def test_a_constrained_request_is_not_decoded_speculatively_and_still_validates(loaded):
    """A JSON-schema constraint keeps state per accepted token, so such a request goes to the batch."""
    _, speculative = engines(loaded)
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    request = GenerateRequest(
        request_id="j",
        messages=[ChatMessage(role="user", content=PARIS)],
        sampling=SamplingParams(temperature=0, max_tokens=24),
        json_schema=schema,
    )
    events = run(speculative, request)
    assert isinstance(json.loads(text_of(events, "j"))["city"], str)
    assert finished(events, "j").draft_accepted_tokens == 0

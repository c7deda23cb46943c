"""The gguf engine driven as the worker's generation thread drives it (submit, then step until done), against its
real llama-server on the bundled GGUF: how the chunks of several streams are grouped into steps."""

from __future__ import annotations

import time

import pytest

from protocol.generation import Finished, GenerateRequest, SamplingParams, TextChunk
from protocol.launch import EngineSettings, LlamaCppSettings
from supervisor.bundled import bundled_path
from tests.conftest import MODEL
from worker.gguf_engine import GGUFEngine, load_gguf

pytestmark = pytest.mark.needs_tool("llama-server")


@pytest.fixture(scope="module")
def engine():
    loaded = load_gguf(str(bundled_path(MODEL)), 512, None, LlamaCppSettings(parallel=4, threads=2), EngineSettings())
    engine = GGUFEngine(loaded)
    yield engine
    engine.close()


def _request(rid: str, topic: str, max_tokens: int) -> GenerateRequest:
    return GenerateRequest(
        request_id=rid,
        prompt=f"A short story about {topic}:",
        sampling=SamplingParams(temperature=0.0, max_tokens=max_tokens),
    )


def _run(engine: GGUFEngine, requests: list[GenerateRequest]) -> list[list]:
    """The events of each step until every request has finished."""
    for request in requests:
        assert engine.submit(request)
    steps: list[list] = []
    deadline = time.monotonic() + 120
    while engine.busy:
        assert time.monotonic() < deadline, "the requests did not finish"
        events: list = []
        engine.step(events.append)
        steps.append(events)
    return steps


def test_a_step_carries_the_token_of_every_stream_llama_server_decoded_together(engine):
    """llama-server writes the chunks of one decode step a few milliseconds apart; a step hands them on together
    (one message to the gateway), and a stream that finishes is not waited for by the others."""
    requests = [_request("a", "a lighthouse", 8), _request("b", "a cat", 20), _request("c", "a river", 20)]
    steps = _run(engine, requests)
    finished = {e.request_id: e for step in steps for e in step if isinstance(e, Finished)}
    assert {rid: f.usage.completion_tokens for rid, f in finished.items()} == {"a": 8, "b": 20, "c": 20}
    chunked = [{e.request_id for e in step if isinstance(e, TextChunk)} for step in steps]
    chunked = [ids for ids in chunked if ids]
    # The steps while all three decode, and those after "a" finished, while b and c decode.
    started = next((i for i, ids in enumerate(chunked) if ids == {"a", "b", "c"}), None)
    assert started is not None, f"no step carried all three streams: {chunked}"
    a_done = max(i for i, ids in enumerate(chunked) if "a" in ids)
    together = chunked[started : a_done + 1]
    pair = [ids for ids in chunked[a_done + 1 :] if ids & {"b", "c"}]
    # Not every one (a chunk can come later than the wait on a loaded machine), but most: sent as each came,
    # three streams made about one chunk per step.
    assert sum(ids == {"a", "b", "c"} for ids in together) >= len(together) / 2, chunked
    assert sum(ids == {"b", "c"} for ids in pair) >= len(pair) / 2, chunked

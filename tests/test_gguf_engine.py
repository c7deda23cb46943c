"""The gguf engine driven as the worker's generation thread drives it (submit, then step until done), against its
real llama-server on the bundled GGUF: how the chunks of several streams are grouped into steps, and how a stream's
tokens are paced (llama_cpp.stream_interval_ms)."""

from __future__ import annotations

import json
import time

import pytest

from protocol.generation import Finished, GenerateRequest, SamplingParams, TextChunk
from protocol.launch import EngineSettings, LlamaCppSettings
from supervisor.bundled import bundled_path
from tests.conftest import MODEL
from worker.gguf_engine import GGUFEngine, load_gguf
from worker.llama_slots import REUSE_TOKENS, Slots

pytestmark = pytest.mark.needs_tool("llama-server")


def _engine(stream_interval_ms: int) -> GGUFEngine:
    llama = LlamaCppSettings(parallel=4, threads=2, stream_interval_ms=stream_interval_ms)
    loaded = load_gguf(str(bundled_path(MODEL)), 512, None, llama, EngineSettings())
    return GGUFEngine(loaded)


@pytest.fixture(scope="module")
def engine():
    engine = _engine(0)
    yield engine
    engine.close()


def _request(rid: str, topic: str, max_tokens: int) -> GenerateRequest:
    return GenerateRequest(
        request_id=rid,
        prompt=f"A short story about {topic}:",
        sampling=SamplingParams(temperature=0.0, max_tokens=max_tokens),
    )


def _run(engine: GGUFEngine, requests: list[GenerateRequest], pace: bool = False) -> list[list]:
    """The events of each step until every request has finished; with `pace`, waiting pause_ms() before each step
    as the generation thread does (on the data socket, where no request comes here)."""
    for request in requests:
        assert engine.submit(request)
    steps: list[list] = []
    deadline = time.monotonic() + 120
    while engine.busy:
        assert time.monotonic() < deadline, "the requests did not finish"
        events: list = []
        if pace:
            time.sleep(engine.pause_ms() / 1000)
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


@pytest.mark.parametrize("interval_ms", [0, 50])
def test_a_flowing_stream_goes_out_a_few_tokens_at_a_time_but_not_its_first_or_last(engine, interval_ms):
    """With a stream interval each step after the first token carries the tokens decoded since the last (a wake-up
    of the worker, the gateway and the client per few tokens, not per token); the first token goes out at once,
    and near max_tokens nothing is held, so the answer's end is not late. Interval 0: a token per step."""
    paced = _engine(interval_ms) if interval_ms else engine
    try:
        steps = _run(paced, [_request("a", "a lighthouse", 40)], pace=True)
    finally:
        if paced is not engine:
            paced.close()
    finished = [e for step in steps for e in step if isinstance(e, Finished)]
    assert finished[0].usage.completion_tokens == 40
    reached = [max((e.completion_tokens for e in step if isinstance(e, TextChunk)), default=0) for step in steps]
    reached = [n for n in reached if n]
    sizes = [b - a for a, b in zip([0, *reached], reached, strict=False)]  # tokens each chunk-carrying step took
    assert sizes[0] == 1, sizes  # the first token, not held for the interval
    grouped = sum(n for n in sizes if n > 1)  # tokens that went out with others
    if interval_ms:
        # llama.cpp decodes this model at 75-140 tok/s here: 4-7 tokens per 50 ms, and the last few go out one by
        # one; half of the answer in groups leaves room for a slow machine.
        assert grouped >= 20, sizes
        assert sizes[-1] == 1, sizes  # the last token came as it was decoded
    else:
        assert grouped <= 4, sizes  # one by one (a loaded machine may now and then read two in one turn)


def test_requests_take_the_lowest_free_slots_unless_another_holds_a_long_prefix():
    slots = Slots(4)
    long = list(range(100, 100 + REUSE_TOKENS + 8))
    assert [slots.take([1]), slots.take(long), slots.take([2])] == [0, 1, 2]
    assert slots.take(long) == 3  # 1 holds it whole, but is busy
    for slot in range(4):
        slots.release(slot)
    assert slots.take([*long, 7]) == 1  # 1 and 3 hold REUSE_TOKENS + 8 of its tokens: worth going up for, to 1
    slots.release(1)
    assert slots.take([*long[: REUSE_TOKENS - 1], 5]) == 0  # REUSE_TOKENS - 1 of them: not worth it, the lowest


def test_concurrent_streams_decode_in_the_lowest_slots(engine):
    """llama.cpp's decode step spans every slot from the lowest busy to the highest: the engine packs them low."""
    _run(engine, [_request(f"p{i}", topic, 8) for i, topic in enumerate(["owls", "rain"])])
    _run(engine, [_request(f"q{i}", topic, 24) for i, topic in enumerate(["ships", "bread", "snow"])])
    status, body = engine._server.client.call("GET", "/slots")
    assert status == 200
    served = sorted((s for s in json.loads(body) if "id_task" in s), key=lambda s: s["id_task"])
    assert sorted(s["id"] for s in served[-3:]) == [0, 1, 2], served  # the last three requests' slots

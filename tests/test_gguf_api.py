"""A model of type gguf served by llama.cpp's llama-server under the same supervisor and APIs: the bundled SmolLM2
GGUF as it is, through the openai and anthropic SDKs; its slots, memory, eviction and crashes."""

from __future__ import annotations

import json
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anthropic
import httpx
import jsonschema
import openai
import psutil
import pytest
from openai import OpenAI

from supervisor.memory_budget import gguf_kv_bytes
from tests.conftest import MODEL
from tests.harness import Server, gone, track, wait_until, write_config
from tests.test_failures import STORY, _model

pytestmark = pytest.mark.needs_tool("llama-server")  # the gguf extra: ./test.sh installs it

PARIS = [{"role": "user", "content": "What is the capital of France?"}]
# llama.cpp's arithmetic (8-bit activations against the Q4_1 weights) is not MLX's: on France, SmolLM2's first token is
# a coin flip between "The" and "L" (log-probabilities -1.92 and -2.01), which llama.cpp calls the other way.
# On Germany it is clear on both.
BERLIN = [{"role": "user", "content": "What is the capital of Germany?"}]
SYSTEM = "You are a helpful assistant for a travel agency. " + " ".join(
    f"Rule {i}: answer briefly and politely, and never invent facts about place number {i}." for i in range(20)
)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def gguf_server(tmp_path_factory, model_store):
    """`g`: the packaged GGUF on llama.cpp (8 slots); `m`: the same model on MLX. The budget holds one of them."""
    config = write_config(
        tmp_path_factory.mktemp("gguf") / "models.yaml",
        model_store,
        [
            {
                "id": "g",
                "source": f"bundled:{MODEL}",
                "type": "gguf",
                "context_length": 1024,
                "memory_gb": 0.8,
                "llama_cpp": {"parallel": 8, "threads": 2},
                "engine": {"prompt_cache_mb": 64},
            },
            {"id": "m", "source": MODEL, "context_length": 1024, "memory_gb": 0.5},
        ],
        memory_budget_gb=1.2,
        crash_limit=10,
    )
    srv = Server(config)
    srv.env["MLX_SERVER_CPU_TUNING"] = "off"  # m's 4-bit weights as loaded: it stays under its 0.5 GB
    yield srv.start()
    srv.stop()


@pytest.fixture(scope="module")
def gclient(gguf_server):
    # 300 s: a tool call under llama.cpp's grammar took 93 s for 24 tokens on this 2-core machine at load 14.
    return OpenAI(base_url=f"{gguf_server.url}/v1", api_key="not-needed", max_retries=0, timeout=300)


def _llama_server(server: Server) -> psutil.Process:
    return track(next(p for p in server.worker("g").children() if p.name() == "llama-server"))


def _slots_processing(process: psutil.Process) -> int:
    socket = process.cmdline()[process.cmdline().index("--host") + 1]
    with httpx.Client(transport=httpx.HTTPTransport(uds=socket), base_url="http://llama") as llama:
        return sum(slot["is_processing"] for slot in llama.get("/slots").json())


def test_berlin_stream_and_usage(gclient):
    reply = gclient.chat.completions.create(model="g", messages=BERLIN, temperature=0, max_tokens=16)
    assert "Berlin" in reply.choices[0].message.content
    assert reply.usage.prompt_tokens > 5 and 0 < reply.usage.completion_tokens <= 16
    stream = gclient.chat.completions.create(
        model="g", messages=BERLIN, temperature=0, max_tokens=16, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # token by token
    assert text == reply.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens


def test_stop_sequence_and_length(gclient):
    reply = gclient.chat.completions.create(model="g", messages=BERLIN, temperature=0, max_tokens=16, stop=["Berlin"])
    assert reply.choices[0].message.content.startswith("The capital of Germany is")
    assert "Berlin" not in reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"
    short = gclient.chat.completions.create(model="g", messages=STORY, temperature=0, max_tokens=4)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 4


def test_seed_repeats_and_logprobs(gclient):
    def sample(seed: int) -> str:
        reply = gclient.chat.completions.create(
            model="g", messages=STORY, temperature=1.0, top_p=0.95, seed=seed, max_tokens=16,
            extra_body={"top_k": 50, "min_p": 0.02, "repetition_penalty": 1.1},
        )  # fmt: skip
        return reply.choices[0].message.content

    assert sample(11) == sample(11)
    reply = gclient.chat.completions.create(
        model="g", messages=BERLIN, temperature=0, max_tokens=8, logprobs=True, top_logprobs=3
    )
    entries = reply.choices[0].logprobs.content
    assert len(entries) == reply.usage.completion_tokens
    assert "".join(e.token for e in entries) == reply.choices[0].message.content
    for entry in entries:  # greedy: the chosen token is the most likely one
        assert len(entry.top_logprobs) == 3 and entry.logprob <= 0
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-4)


def test_json_schema_answer_validates(gclient):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}, "country": {"type": "string", "maxLength": 20}},
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    reply = gclient.chat.completions.create(
        model="g", messages=PARIS, temperature=0, max_tokens=32,
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema}},
    )  # fmt: skip
    assert reply.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)


def test_required_tool_call(gclient):
    reply = gclient.chat.completions.create(
        model="g", messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER], tool_choice="required", temperature=0, max_tokens=48,
    )  # fmt: skip
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)


def test_repeated_prefix_is_served_from_the_prompt_cache(gclient):
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hello!"}]
    first = gclient.chat.completions.create(model="g", messages=messages, temperature=0, max_tokens=4)
    messages[-1]["content"] = "Good morning!"
    second = gclient.chat.completions.create(model="g", messages=messages, temperature=0, max_tokens=4)
    assert first.usage.prompt_tokens > 300
    assert second.usage.prompt_tokens_details.cached_tokens > 300  # the system prompt was not computed again


def test_eight_concurrent_streams_finish_with_their_own_answers(gclient):
    questions = [f"What is {a} plus {a}? Answer with the number only." for a in range(1, 9)]

    def ask(question: str) -> tuple[str, str]:
        stream = gclient.chat.completions.create(
            model="g", messages=[{"role": "user", "content": question}], temperature=0, max_tokens=12, stream=True
        )
        text, finish = "", None
        for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
        return text, finish

    alone = [ask(q)[0] for q in questions[:2]]
    with ThreadPoolExecutor(len(questions)) as pool:
        together = list(pool.map(ask, questions))
    assert all(finish in ("stop", "length") and text.strip() for text, finish in together)
    assert [text for text, _ in together[:2]] == alone  # batched with six others, the same greedy answers
    assert len({text for text, _ in together}) > 4  # each stream got its own answer, not a neighbour's


def test_anthropic_messages_stream(gguf_server):
    claude = anthropic.Anthropic(base_url=gguf_server.url, api_key="unused", max_retries=0)
    reply = claude.messages.create(model="g", max_tokens=16, messages=BERLIN, extra_body={"temperature": 0})
    assert "Berlin" in reply.content[0].text and reply.stop_reason == "end_turn"
    with claude.messages.stream(model="g", max_tokens=16, messages=BERLIN, extra_body={"temperature": 0}) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == reply.content[0].text
    assert final.usage.output_tokens == reply.usage.output_tokens


def test_unsupported_input_is_a_400(gclient):
    with pytest.raises(openai.BadRequestError) as caught:
        gclient.embeddings.create(model="g", input="hello")
    assert "embedding" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        gclient.chat.completions.create(model="g", messages=PARIS, max_tokens=2000)
    assert caught.value.code == "context_length_exceeded"


def test_abort_frees_the_slot_and_memory_covers_llama_server(gguf_server, gclient):
    gclient.chat.completions.create(model="g", messages=PARIS, max_tokens=1)  # loaded
    llama = _llama_server(gguf_server)
    body = {"model": "g", "messages": STORY, "temperature": 0, "max_tokens": 900, "stream": True}
    with httpx.stream("POST", f"{gguf_server.url}/v1/chat/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        for _ in range(4):
            next(lines)
        assert _slots_processing(llama) == 1
    assert wait_until(lambda: _slots_processing(llama) == 0, timeout=30)
    assert wait_until(lambda: _model(gguf_server, "g").in_flight == 0, timeout=30)
    # The worker reports its own resident set and llama-server's: the weights and KV cache live there. By kind, the
    # GGUF file llama-server maps is the weights, the rest of its resident set (mostly the KV cache it allocated
    # for 8 slots x 1024 tokens at start) the KV cache, and the kinds add up to what the budget charges.
    assert wait_until(lambda: _model(gguf_server, "g").worker_memory.rss_bytes > llama.memory_info().rss, timeout=30)
    memory = _model(gguf_server, "g").worker_memory
    weights = Path(llama.cmdline()[llama.cmdline().index("--model") + 1])
    assert memory.weights_bytes == weights.stat().st_size
    assert memory.kv_cache_bytes >= 8 * gguf_kv_bytes(weights, 1024)
    assert sum(memory.by_kind().values()) == memory.resident_bytes


def test_worker_killed_mid_stream_is_an_error_and_the_next_request_works(gguf_server, gclient):
    gclient.chat.completions.create(model="g", messages=PARIS, max_tokens=1)
    llama = _llama_server(gguf_server)
    stream = gclient.chat.completions.create(model="g", messages=STORY, temperature=0, max_tokens=300, stream=True)
    with pytest.raises(openai.APIError):
        for received, _ in enumerate(stream):
            if received == 2:
                gguf_server.signal_worker("g", signal.SIGKILL)
    assert wait_until(lambda: gone(llama), timeout=30)  # the worker's llama-server went with it
    reply = gclient.chat.completions.create(model="g", messages=BERLIN, temperature=0, max_tokens=16)
    assert "Berlin" in reply.choices[0].message.content


def test_llama_server_killed_mid_stream_ends_the_stream_and_its_worker(gguf_server, gclient):
    gclient.chat.completions.create(model="g", messages=PARIS, max_tokens=1)
    worker, llama = gguf_server.worker("g"), _llama_server(gguf_server)
    stream = gclient.chat.completions.create(model="g", messages=STORY, temperature=0, max_tokens=300, stream=True)
    with pytest.raises(openai.APIError):  # the stream's connection to llama-server broke: worker_crashed
        for received, _ in enumerate(stream):
            if received == 2:
                llama.kill()
    # The worker can serve nothing more: it exits now (not at the next request, which would then be taken for the
    # crash's cause), and the supervisor sees it gone; the next request gets a new worker.
    assert wait_until(lambda: gone(worker), timeout=30)
    assert wait_until(lambda: _model(gguf_server, "g").pid != worker.pid, timeout=30)
    reply = gclient.chat.completions.create(model="g", messages=BERLIN, temperature=0, max_tokens=16)
    assert "Berlin" in reply.choices[0].message.content


def test_eviction_stops_llama_server(gguf_server, gclient):
    gclient.chat.completions.create(model="g", messages=PARIS, max_tokens=1)
    llama = _llama_server(gguf_server)
    reply = gclient.chat.completions.create(model="m", messages=PARIS, temperature=0, max_tokens=16)
    assert "Paris" in reply.choices[0].message.content
    assert _model(gguf_server, "g").state == "stopped"  # evicted for m: the budget holds one of them
    assert wait_until(lambda: gone(llama), timeout=30)
    reply = gclient.chat.completions.create(model="g", messages=BERLIN, temperature=0, max_tokens=16)
    assert "Berlin" in reply.choices[0].message.content
    assert _model(gguf_server, "m").state == "stopped"

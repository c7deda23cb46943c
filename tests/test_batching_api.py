"""Many requests to one model at once, through the real server: batching, prompt cache, abort, logprobs."""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from tests.test_failures import STORY, _model

PARIS = [{"role": "user", "content": "What is the capital of France?"}]
SYSTEM = "You are a helpful assistant for a travel agency. " + " ".join(
    f"Rule {i}: answer briefly and politely, and never invent facts about place number {i}." for i in range(30)
)

# Eight streams in one batch, each with its own settings, each visibly applied.
SETTINGS = [
    {"temperature": 0},
    {"temperature": 0, "stop": [" Paris"]},
    {"temperature": 0, "logprobs": True, "top_logprobs": 2},
    {"temperature": 0, "max_tokens": 6},
    {"temperature": 0.7, "top_p": 0.9},
    {"temperature": 1.0, "top_k": 40, "seed": 3},
    {"temperature": 0.8, "min_p": 0.1},
    {"temperature": 1.2, "top_p": 0.8, "top_k": 10, "repetition_penalty": 1.3},
]
EXTRAS = {"top_k", "min_p", "repetition_penalty"}  # not in OpenAI's API: the SDK sends them as extra_body


@dataclass
class Streamed:
    ids: set[str]
    text: str
    finish: str | None
    tokens: int
    logprobs: list


def _stream(client, settings: dict) -> Streamed:
    standard = {k: v for k, v in settings.items() if k not in EXTRAS}
    extra = {k: v for k, v in settings.items() if k in EXTRAS}
    stream = client.chat.completions.create(
        model="smollm2", messages=PARIS, stream=True, stream_options={"include_usage": True}, extra_body=extra,
        **({"max_tokens": 16} | standard),
    )  # fmt: skip
    out = Streamed(set(), "", None, 0, [])
    for chunk in stream:
        out.ids.add(chunk.id)
        if chunk.usage:
            out.tokens = chunk.usage.completion_tokens
        if chunk.choices:
            choice = chunk.choices[0]
            out.text += choice.delta.content or ""
            out.finish = choice.finish_reason or out.finish
            out.logprobs += choice.logprobs.content if choice.logprobs and choice.logprobs.content else []
    return out


class PeakWatch(threading.Thread):
    """Polls the supervisor's status (which pings the worker between two decode steps) for the most requests
    decoding at once: in flight and past their prefill."""

    def __init__(self, server, model_id: str):
        super().__init__(daemon=True)
        self.server, self.model_id = server, model_id
        self.peak, self.stopped = 0, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.02):
            model = _model(self.server, self.model_id)
            self.peak = max(self.peak, model.in_flight - model.queued)


def test_eight_concurrent_streams_are_batched_each_with_its_own_settings(server, client):
    client.chat.completions.create(model="smollm2", messages=PARIS, max_tokens=1)  # loaded before we start
    watch = PeakWatch(server, "smollm2")
    watch.start()
    try:
        with ThreadPoolExecutor(len(SETTINGS)) as pool:
            results = list(pool.map(lambda s: _stream(client, s), SETTINGS))
    finally:
        watch.stopped.set()
        watch.join()
    assert watch.peak >= 8, f"at most {watch.peak} of the 8 streams were decoding together"
    ids = [r.ids for r in results]
    assert all(len(i) == 1 for i in ids) and len(set.union(*ids)) == len(SETTINGS)  # one id per stream
    plain, stopped, logprobs, short, *_ = results
    for result in results:
        assert result.finish in {"stop", "length"} and 0 < result.tokens <= 16
    assert "Paris" in plain.text and "Paris" in logprobs.text
    # The stop sequence ended its stream before it would have been sent.
    assert stopped.finish == "stop" and stopped.text.startswith("The capital of France") and "Paris" not in stopped.text
    # Logprobs for every token of that stream, two alternatives each, and for no other stream.
    assert len(logprobs.logprobs) == logprobs.tokens and "".join(e.token for e in logprobs.logprobs) == logprobs.text
    assert all(len(e.top_logprobs) == 2 and e.top_logprobs[0].token == e.token for e in logprobs.logprobs)
    assert [r.logprobs for r in results if r is not logprobs] == [[]] * 7
    # Its own max_tokens, and greedy: the beginning of the plain stream's answer.
    assert short.finish == "length" and short.tokens == 6 and plain.text.startswith(short.text)
    # The seeded stream repeats exactly when asked again alone.
    seeded = SETTINGS.index({"temperature": 1.0, "top_k": 40, "seed": 3})
    assert _stream(client, SETTINGS[seeded]).text == results[seeded].text


def test_abort_mid_stream_hands_the_only_slot_to_the_next_request(server, client):
    # "solo" decodes one sequence at a time: the second request can only start once the first is gone.
    body = {"model": "solo", "messages": STORY, "temperature": 0, "max_tokens": 1000, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=120) as response:
        lines = response.iter_lines()
        while not next(lines).startswith('data: {"id"'):
            pass
    # The client left after the first chunk; 1000 tokens would take minutes to finish here.
    reply = client.chat.completions.create(model="solo", messages=PARIS, temperature=0, max_tokens=12)
    assert "Paris" in reply.choices[0].message.content
    assert _model(server, "solo").in_flight == 0
    assert server.ctl("unload", "solo").returncode == 0


def test_a_shared_long_prefix_is_reported_as_cached_tokens(client):
    def ask(question):
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
        return client.chat.completions.create(model="smollm2", messages=messages, temperature=0, max_tokens=4).usage

    ask("Where is Rome?")
    usage = ask("Where is Oslo?")
    assert usage.prompt_tokens > 300
    assert 300 < usage.prompt_tokens_details.cached_tokens < usage.prompt_tokens


def test_a_chat_turn_reuses_the_previous_turn(client):
    first = [{"role": "user", "content": "Name a fruit."}]
    answer = client.chat.completions.create(model="smollm2", messages=first, temperature=0, max_tokens=8)
    follow_up = [
        *first,
        {"role": "assistant", "content": answer.choices[0].message.content},
        {"role": "user", "content": "And a vegetable?"},
    ]
    usage = client.chat.completions.create(model="smollm2", messages=follow_up, temperature=0, max_tokens=4).usage
    assert usage.prompt_tokens_details.cached_tokens >= answer.usage.prompt_tokens


def test_logprobs_have_the_openai_shape(client):
    reply = client.chat.completions.create(
        model="smollm2", messages=PARIS, temperature=0, max_tokens=8, logprobs=True, top_logprobs=5
    )
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    assert "".join(t.token for t in content) == reply.choices[0].message.content
    for entry in content:
        assert math.isfinite(entry.logprob) and entry.logprob <= 0
        assert entry.bytes == list(entry.token.encode())
        assert len(entry.top_logprobs) == 5
        assert all(math.isfinite(t.logprob) and t.logprob <= entry.top_logprobs[0].logprob for t in entry.top_logprobs)
    plain = client.chat.completions.create(model="smollm2", messages=PARIS, temperature=0, max_tokens=2)
    assert plain.choices[0].logprobs is None


def test_streamed_logprobs_cover_every_token(client):
    stream = client.chat.completions.create(
        model="smollm2", messages=PARIS, temperature=0, max_tokens=8, logprobs=True, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    entries = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert len(entries) == chunks[-1].usage.completion_tokens
    assert all(e.logprob <= 0 and e.top_logprobs == [] for e in entries)

"""Property-based tests of the three generation APIs: a valid request with one field mutated at a time.

Each case is a valid request (streamed or not) with one field set to a value of one class
(tests/request_mutations.py), sent to the session server with its own X-Request-ID and read to its end (a
stream to `[DONE]` or `message_stop`, or its error event). For every case: no 5xx and no error that says the
server failed (internal_error, worker_crashed, timeout); every error in its dialect's shape; a class that must
reach a worker did (the worker logs every request it finishes or refuses with its X-Request-ID); a class the
gateway must refuse is a 400 that no worker saw. At the end of each dialect's run the supervisor's
worker_crashes_total and the gateway's generation_errors_total{code="internal_error"} are unchanged.

`pytest --hypothesis-show-statistics tests/test_properties.py` prints how often each class and outcome came up
in the generated cases; every class also runs once, first, with its canonical value.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from dataclasses import dataclass

import httpx
import pytest
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.statistics import collector, describe_statistics

from tests.request_mutations import (
    DROP,
    EDGE,
    OPENAI_TOOL,
    QUESTION,
    WEATHER,
    WORKER,
    Mutation,
    chat_mutations,
    completion_mutations,
    messages_mutations,
)
from tests.test_metrics import scrape, value

SERVER_FAILURES = {"internal_error", "worker_crashed", "timeout", "api_error", "overloaded_error"}
LONG = "word " * 3000  # more than the test model's 2048-token context
BAD = "iVBORw0KGgo\u00e9AAAA"  # a PNG's first bytes in base64, with a non-ASCII character among them


@dataclass(frozen=True)
class Dialect:
    name: str
    path: str
    base: dict
    mutations: list[Mutation]
    generated: int  # hypothesis examples beyond one per class

    @property
    def anthropic(self) -> bool:
        return self.name == "messages"


USER = [{"role": "user", "content": QUESTION}]
DIALECTS = [
    Dialect(
        "chat", "/v1/chat/completions", {"model": "smollm2", "messages": USER, "max_tokens": 3}, chat_mutations(), 20
    ),
    Dialect(
        "completions",
        "/v1/completions",
        {"model": "smollm2", "prompt": "The capital of France is", "max_tokens": 3},
        completion_mutations(),
        10,
    ),
    Dialect(
        "messages", "/v1/messages", {"model": "smollm2", "messages": USER, "max_tokens": 3}, messages_mutations(), 15
    ),
]


def chat_messages(name: str, value) -> list[dict]:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    return {
        "system and user": [{"role": "system", "content": "Be brief."}, *USER],
        "a multi-turn conversation": [
            *USER,
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And of Italy?"},
        ],
        "text parts": [
            {"role": "user", "content": [{"type": "text", "text": QUESTION}, {"type": "text", "text": " Briefly."}]}
        ],
        "an empty content": [{"role": "user", "content": ""}],
        "ending with the assistant": [*USER, {"role": "assistant", "content": "The capital is"}],
        "a tool exchange": [
            *USER,
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
        ],
        "any unicode": [{"role": "user", "content": value}],
        "longer than the context": [{"role": "user", "content": LONG}],
        "an image whose base64 holds a non-ASCII character": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{BAD}"}}]}
        ],
        "empty list": [],
        "an unknown role": [{"role": "wizard", "content": "hi"}],
    }[name]


def claude_messages(name: str, value) -> list[dict]:
    use = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": BAD}}
    return {
        "text blocks": [{"role": "user", "content": [{"type": "text", "text": QUESTION}]}],
        "a tool_use and its result": [
            *USER,
            {"role": "assistant", "content": [use]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny"}]},
        ],
        "ending with the assistant": [*USER, {"role": "assistant", "content": "The capital is"}],
        "any unicode": [{"role": "user", "content": value or " "}],
        "longer than the context": [{"role": "user", "content": LONG}],
        "an image whose base64 holds a non-ASCII character": [{"role": "user", "content": [image]}],
        "an empty content list": [{"role": "user", "content": []}],
        "an unknown role": [{"role": "robot", "content": "hi"}],
    }[name]


def mutate(dialect: Dialect, mutation: Mutation, value) -> dict:
    """The dialect's valid request with the one field of `mutation` set to `value` (raw values as a marker)."""
    body = dict(dialect.base)
    field, name = mutation.field, mutation.name
    if mutation.raw:
        body[field] = "__RAW__"
    elif value is DROP:
        body.pop(field)
    elif field == "messages":
        body["messages"] = claude_messages(name, value) if dialect.anthropic else chat_messages(name, value)
        if "tool" in name:
            body["tools"] = [{"name": "get_weather", "input_schema": WEATHER}] if dialect.anthropic else [OPENAI_TOOL]
    elif field == "logprobs":
        body["logprobs"], body["top_logprobs"] = value
    elif field == "tools" and dialect.anthropic:
        if value != "any-alone":
            body["tools"] = [{"name": "get_weather", "input_schema": WEATHER}]
        choice = value.removesuffix("-alone")
        body["tool_choice"] = {"type": "tool", "name": "get_weather"} if value == "tool" else {"type": choice}
    elif field == "tools":
        tool = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}
        if value == "broken":
            tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": 5}}}
        elif value == "bad-name":
            tool = {"type": "function", "function": {"name": "bad name!", "parameters": WEATHER}}
        if value != "required-alone":
            body["tools"] = [tool]
        named = {"type": "function", "function": {"name": "get_weather"}}
        body["tool_choice"] = (
            named
            if value == "named"
            else {"broken": "required", "bad-name": "auto"}.get(value, value.removesuffix("-alone"))
        )
    else:
        body[field] = value
    return body


def encode(body: dict, mutation: Mutation, value) -> bytes:
    text = json.dumps(body)
    return (text.replace('"__RAW__"', value) if mutation.raw else text).encode()


@dataclass
class Outcome:
    status: int
    error: dict | None  # the error body's inner object (OpenAI's "error", Anthropic's "error")
    ended: bool  # the answer was read to its documented end (or to its error)


def read_stream(response: httpx.Response, anthropic: bool) -> Outcome:
    """An SSE body to its end: OpenAI's data lines to [DONE] (or an error object), Anthropic's events to
    message_stop (or an error event)."""
    events = []  # (event name, data)
    name = None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = line.removeprefix("data: ")
            events.append((name, None if data == "[DONE]" else json.loads(data)))
            name = None
    if not events:
        return Outcome(200, None, ended=False)
    last_name, last = events[-1]
    if anthropic:
        error = last["error"] if last_name == "error" else None
        return Outcome(200, error, ended=last_name in ("message_stop", "error"))
    error = last["error"] if last is not None and "error" in last else None
    return Outcome(200, error, ended=last is None or error is not None)


def send(http: httpx.Client, dialect: Dialect, body: bytes, stream: bool, trace: str) -> Outcome:
    headers = {"Content-Type": "application/json", "X-Request-ID": trace}
    with http.stream("POST", dialect.path, content=body, headers=headers) as response:
        if response.status_code == 200 and stream:
            return read_stream(response, dialect.anthropic)
        response.read()
    status = response.status_code
    parsed = response.json()  # every answer, error or not, is JSON
    if status < 400:
        return Outcome(status, None, ended=True)
    return Outcome(status, parsed.get("error") if isinstance(parsed, dict) else parsed, ended=True)


def assert_error_shape(error, anthropic: bool) -> None:
    assert isinstance(error, dict), error
    if anthropic:
        assert isinstance(error.get("type"), str) and isinstance(error.get("message"), str), error
    else:
        assert set(error) == {"message", "type", "param", "code"}, error
        assert isinstance(error["message"], str) and isinstance(error["code"], str), error


class WorkerLog:
    """What the servers logged since the last look: each request a worker finished or refused, by X-Request-ID."""

    def __init__(self, server):
        self.path, self.offset, self.seen = server.log_path, server.log_path.stat().st_size, ""

    def read(self) -> str:
        with self.path.open("rb") as log:
            log.seek(self.offset)
            chunk = log.read()
        self.offset += len(chunk)
        self.seen = self.seen[-200_000:] + chunk.decode(errors="replace")
        return self.seen

    def handled(self, trace: str) -> bool:
        return re.search(rf"\[x-request-id {re.escape(trace)}\] (finished|refused)", self.read()) is not None

    def about(self, trace: str) -> str:
        """The lines that name `trace`, shortened: what an operator would read about the case."""
        return " | ".join(line[:300] for line in self.read().splitlines() if trace in line)[:900]


def server_failures(url: str) -> tuple[float, float]:
    samples = scrape(url)
    crashes = value(samples, "mlx_server_worker_crashes_total")
    return crashes, value(samples, "mlx_server_generation_errors_total", code="internal_error")


def judge(mutation: Mutation, outcome: Outcome, reached: bool, anthropic: bool) -> str | None:
    """What is wrong with this case's outcome, if anything."""
    error = outcome.error or {}
    code = error.get("code") or error.get("type")
    if outcome.status == 0:
        return f"no answer: {code}"
    if outcome.status >= 500:
        return f"{outcome.status} {code}: {str(error.get('message'))[:160]}"
    if not outcome.ended:
        return "the stream stopped before its end ([DONE] / message_stop) or an error event"
    if outcome.error is not None:
        try:
            assert_error_shape(outcome.error, anthropic)
        except AssertionError:
            return f"an error body not in the dialect's shape: {outcome.error}"
        if code in SERVER_FAILURES:
            return f"{code} inside a {outcome.status}: {str(error.get('message'))[:160]}"
    if mutation.expect == WORKER and not reached:
        return f"no worker saw it: {outcome.status} {code}: {str(error.get('message'))[:160]}"
    if mutation.expect == EDGE and (outcome.status != 400 or reached):
        return f"the gateway should refuse it with a 400; got {outcome.status} {code}" + (" from a worker" * reached)
    return None


@pytest.mark.timeout(1500)
@pytest.mark.parametrize("dialect", DIALECTS, ids=[d.name for d in DIALECTS])
def test_a_valid_request_with_one_field_mutated(server, client, dialect, request):
    # A fresh worker for each dialect, so what one dialect's cases did to a worker is counted there alone.
    assert server.ctl("unload", "smollm2").returncode == 0
    client.chat.completions.create(model="smollm2", messages=USER, max_tokens=1)  # loaded before we start
    before = server_failures(server.url)
    log = WorkerLog(server)
    tally: Counter = Counter()
    problems: list[str] = []
    # A connection per case: a connection the server closed after one case's answer is no other case's failure.
    http = httpx.Client(base_url=server.url, timeout=180, limits=httpx.Limits(max_keepalive_connections=0))
    cases = st.sampled_from(dialect.mutations).flatmap(lambda m: st.tuples(st.just(m), m.values, st.booleans()))

    def run(case) -> None:
        mutation, value, stream = case
        trace = f"prop-{uuid.uuid4().hex[:12]}"
        body = mutate(dialect, mutation, value) | ({"stream": True} if stream else {})
        if stream and not dialect.anthropic:
            body["stream_options"] = {"include_usage": True}
        try:
            outcome = send(http, dialect, encode(body, mutation, value), stream, trace)
        except httpx.TransportError as exc:
            outcome = Outcome(0, {"code": f"{type(exc).__name__}: {exc}"}, ended=False)
        reached = log.handled(trace)
        code = (outcome.error or {}).get("code") or (outcome.error or {}).get("type")
        result = f"{outcome.status}, {'a' if reached else 'no'} worker logged it" + (f" ({code})" if code else "")
        event(mutation.label)
        event(f"outcome: {result}")
        event("streamed" if stream else "whole")
        tally[(mutation.label, result)] += 1
        wrong = judge(mutation, outcome, reached, dialect.anthropic)
        if wrong:
            how = "streamed" if stream else "whole"
            problems.append(f"{mutation.label} = {repr(value)[:60]} ({how}): {wrong}\n      log: {log.about(trace)}")

    for i, mutation in reversed(list(enumerate(dialect.mutations))):  # one canonical case per class, in order
        run = example(case=(mutation, mutation.example, i % 2 == 1))(run)

    def note_statistics(stats) -> None:  # what pytest's --hypothesis-show-statistics prints for this test
        stats["nodeid"] = request.node.nodeid
        request.node.hypothesis_statistics = describe_statistics(stats)

    with collector.with_value(note_statistics):
        settings(
            max_examples=dialect.generated,
            phases=[Phase.explicit, Phase.generate],  # no shrinking: each case is a real generation
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )(given(case=cases)(run))()

    http.close()
    print(f"\n{dialect.name}: {sum(tally.values())} cases")
    for (label, result), n in sorted(tally.items()):
        print(f"  {n:3d}  {label:55s} {result}")
    assert {label for label, _ in tally} == {m.label for m in dialect.mutations}  # every class was exercised
    assert not problems, f"{len(problems)} of {sum(tally.values())} cases went wrong:\n  " + "\n  ".join(problems)
    crashes, internal_errors = server_failures(server.url)
    assert crashes == before[0], f"{crashes - before[0]:.0f} worker crashes"
    assert internal_errors == before[1], f"{internal_errors - before[1]:.0f} generations failed with internal_error"

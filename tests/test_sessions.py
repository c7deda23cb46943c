"""Sessions through the real server: Redis (the secured server) and in memory (the keyless dev server)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.harness import RedisServer

PARIS = [{"role": "user", "content": "What is the capital of France?"}]


class Caller:
    """One service's view of a server."""

    def __init__(self, url: str, key: str | None = None):
        self.url = url
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def post(self, path: str, body: dict | None = None) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body, headers=self.headers, timeout=180)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers=self.headers, timeout=30)

    def delete(self, path: str) -> httpx.Response:
        return httpx.delete(f"{self.url}{path}", headers=self.headers, timeout=30)

    def create(self, **body) -> str:
        reply = self.post("/api/v1/sessions", body)
        assert reply.status_code == 201, reply.text
        return reply.json()["id"]

    def turn(self, session_id: str, content: str, **body) -> httpx.Response:
        payload = {"messages": [{"role": "user", "content": content}], "temperature": 0, "max_tokens": 4}
        return self.post("/v1/chat/completions", payload | {"session_id": session_id} | body)

    def messages(self, session_id: str) -> list[dict]:
        reply = self.get(f"/api/v1/sessions/{session_id}/messages")
        assert reply.status_code == 200, reply.text
        return reply.json()["data"]


@pytest.fixture
def vista(secure_server, keys):
    return Caller(secure_server.url, keys.vista)


@pytest.fixture
def fork(secure_server, keys):
    return Caller(secure_server.url, keys.fork)


def round_trip(caller: Caller) -> None:
    session_id = caller.create(metadata={"patient": "rex"}, messages=[{"role": "system", "content": "Be brief."}])
    first = caller.turn(session_id, "What is the capital of France?", max_tokens=16)
    assert first.status_code == 200, first.text
    assert "Paris" in first.json()["choices"][0]["message"]["content"]
    second = caller.turn(session_id, "And of Italy?")
    assert second.status_code == 200
    # The stored conversation went before the new question.
    assert second.json()["usage"]["prompt_tokens"] > first.json()["usage"]["prompt_tokens"] + 10
    messages = caller.messages(session_id)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert messages[1]["content"] == "What is the capital of France?"
    assert messages[2]["content"] == first.json()["choices"][0]["message"]["content"]
    info = caller.get(f"/api/v1/sessions/{session_id}").json()
    assert info["id"] == session_id and info["message_count"] == 5 and info["metadata"] == {"patient": "rex"}
    assert info["expires_at"] > info["updated_at"]
    assert session_id in [s["id"] for s in caller.get("/api/v1/sessions").json()["data"]]
    deleted = caller.delete(f"/api/v1/sessions/{session_id}")
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert caller.get(f"/api/v1/sessions/{session_id}").status_code == 404
    assert caller.turn(session_id, "Hello?").json()["error"]["code"] == "session_not_found"


def test_session_round_trip_in_redis(vista):
    round_trip(vista)


def test_session_round_trip_in_memory(server):
    round_trip(Caller(server.url))


def test_openai_sdk_continues_a_session_with_extra_body(secure_server, keys, vista):
    session_id = vista.create()
    client = openai.OpenAI(base_url=f"{secure_server.url}/v1", api_key=keys.vista, max_retries=0, timeout=120)
    stream = client.chat.completions.create(
        model="tiny",
        messages=PARIS,
        temperature=0,
        max_tokens=16,
        stream=True,
        extra_body={"session_id": session_id},
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert "Paris" in text
    assert vista.messages(session_id) == [PARIS[0], {"role": "assistant", "content": text}]


def test_a_tool_using_conversation_continues_across_turns(secure_server, keys, vista):
    from tests.test_tools_structured_api import ASK, TOOLS

    session_id = vista.create()
    client = openai.OpenAI(base_url=f"{secure_server.url}/v1", api_key=keys.vista, max_retries=0, timeout=120)
    turn = {"model": "tiny", "tools": TOOLS, "temperature": 0, "extra_body": {"session_id": session_id}}
    # Turn 1, streamed: the model must call the tool; the session keeps the call with its id and arguments.
    chunks = client.chat.completions.create(**turn, messages=ASK, tool_choice="required", max_tokens=40, stream=True)
    [delta] = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or ()]
    call = {
        "id": delta.id,
        "type": "function",
        "function": {"name": "get_weather", "arguments": delta.function.arguments},
    }
    assert delta.function.name == "get_weather"
    assert vista.messages(session_id) == [ASK[0], {"role": "assistant", "content": "", "tool_calls": [call]}]
    # Turn 2 sends only the tool's result: the session replays the question and the call before it.
    result = {"role": "tool", "tool_call_id": delta.id, "content": "Sunny, 24 degrees"}
    answer = client.chat.completions.create(**turn, messages=[result], tool_choice="none", max_tokens=8)
    text = answer.choices[0].message.content
    assert text and not answer.choices[0].message.tool_calls
    assert vista.messages(session_id) == [
        ASK[0],
        {"role": "assistant", "content": "", "tool_calls": [call]},
        result,
        {"role": "assistant", "content": text},
    ]
    # The model saw the same prompt as a client that sends the whole conversation itself.
    whole = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call]}, result]
    del turn["extra_body"]
    explicit = client.chat.completions.create(**turn, messages=whole, tool_choice="none", max_tokens=8)
    assert answer.usage.prompt_tokens == explicit.usage.prompt_tokens
    assert explicit.choices[0].message.content == text


def test_another_services_session_is_404_everywhere(vista, fork):
    session_id = vista.create()
    assert vista.turn(session_id, "Hi").status_code == 200
    for reply in (
        fork.get(f"/api/v1/sessions/{session_id}"),
        fork.get(f"/api/v1/sessions/{session_id}/messages"),
        fork.delete(f"/api/v1/sessions/{session_id}"),
        fork.turn(session_id, "Hi"),
    ):
        assert reply.status_code == 404, reply.text
        assert reply.json()["error"]["code"] == "session_not_found"
    assert session_id not in [s["id"] for s in fork.get("/api/v1/sessions").json()["data"]]
    assert len(vista.messages(session_id)) == 2  # untouched


def test_twenty_concurrent_turns_lose_no_message(vista):
    session_id = vista.create()
    with ThreadPoolExecutor(20) as pool:
        replies = list(pool.map(lambda i: vista.turn(session_id, f"Turn {i}", max_tokens=2), range(20)))
    assert [r.status_code for r in replies] == [200] * 20
    messages = vista.messages(session_id)
    assert len(messages) == 40
    assert sorted(m["content"] for m in messages if m["role"] == "user") == sorted(f"Turn {i}" for i in range(20))
    # Each question is followed by its own answer: a turn is appended in one step.
    assert [m["role"] for m in messages] == ["user", "assistant"] * 20


def test_history_longer_than_the_context_is_trimmed_keeping_the_system_message(secure_server, keys):
    ops = Caller(secure_server.url, keys.ops)  # may use `short`, whose context is 512 tokens
    turn = "Tell me about the weather. " * 12  # ~70 tokens
    history = [{"role": "system", "content": "You are a weather bot."}]
    for i in range(8):
        history += [{"role": "user", "content": f"{i}: {turn}"}, {"role": "assistant", "content": turn}]
    body = {"model": "short", "max_tokens": 4, "temperature": 0}
    too_long = ops.post("/v1/chat/completions", body | {"messages": [*history, PARIS[0]]})
    assert too_long.json()["error"]["code"] == "context_length_exceeded"  # without a session: refused
    session_id = ops.create(messages=history)
    reply = ops.turn(session_id, "What is the capital of France?", model="short")
    assert reply.status_code == 200, reply.text
    assert 300 < reply.json()["usage"]["prompt_tokens"] <= 512 - 4
    assert len(ops.messages(session_id)) == len(history) + 2  # trimmed for the model, not in the store
    assert "trimmed the" in secure_server.log_text()


def test_bad_session_requests(vista):
    assert vista.post("/api/v1/sessions", {"metadata": "not an object"}).status_code == 400
    assert (
        vista.post("/api/v1/sessions", {"messages": [{"role": "wizard"}]}).json()["error"]["param"]
        == "messages[0].role"
    )
    assert vista.get("/api/v1/sessions/sess_does-not-exist").status_code == 404
    assert vista.get(f"/api/v1/sessions/{'x' * 300}").status_code == 404
    assert vista.turn("", "Hi").status_code == 400


def test_redis_outage_fails_session_requests_only(secure_server, keys):
    """Redis stopped: session requests get 503, plain requests still succeed; Redis back: sessions work."""
    redis = RedisServer().start()
    started = [redis]
    try:
        gateway = secure_server.spawn_gateway(REDIS_URL=redis.url).wait_ready()
        vista = Caller(gateway.url, keys.vista)
        metered = Caller(gateway.url, keys.metered)
        session_id = vista.create()
        assert vista.turn(session_id, "Hi").status_code == 200

        redis.stop()
        for reply in (
            vista.post("/api/v1/sessions", {}),
            vista.get("/api/v1/sessions"),
            vista.get(f"/api/v1/sessions/{session_id}"),
            vista.turn(session_id, "Still there?"),
        ):
            assert reply.status_code == 503, reply.text
            assert reply.json()["error"]["code"] == "session_store_unavailable"
            assert "Redis" in reply.json()["error"]["message"]
            assert int(reply.headers["retry-after"]) >= 1
        plain = vista.post("/v1/chat/completions", {"messages": PARIS, "temperature": 0, "max_tokens": 16})
        assert plain.status_code == 200 and "Paris" in plain.json()["choices"][0]["message"]["content"]
        # Rate limits fall back to this gateway's memory: metered's 5 requests a minute still hold.
        statuses = [metered.get("/v1/models").status_code for _ in range(6)]
        assert statuses == [200] * 5 + [429], statuses
        limited = metered.get("/v1/models")
        assert limited.json()["error"]["code"] == "rate_limit_exceeded" and int(limited.headers["retry-after"]) >= 1
        assert "counting in this process meanwhile" in secure_server.log_text()

        started.append(RedisServer(port=redis.port).start())  # empty: a fresh server on the same address
        restarted_id = vista.create()
        assert vista.turn(restarted_id, "Back?").status_code == 200
        assert len(vista.messages(restarted_id)) == 2
        gateway.stop()
    finally:
        for server in started:
            server.cleanup()

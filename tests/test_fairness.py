"""Fair and bounded, through a real server: a service past its own in-flight limit waits in its own queue, past
that gets 429 with Retry-After (in its dialect's shape) while another service is served; a service's ceiling on
tokens per answer; tokens per minute charged for aborted streams, embeddings and rerank; the in-memory session
store bounded per service and swept on a timer."""

from __future__ import annotations

import asyncio
import re
import socket
import threading

import httpx
import pytest

from gateway.sessions import MemorySessionStore
from tests.conftest import EMBEDDER, SHARED, secret
from tests.harness import Server, wait_until, write_config

ASK = [{"role": "user", "content": "Count from one to one hundred, in words."}]


@pytest.fixture(scope="module")
def fair_server(tmp_path_factory, model_store):
    keys = {name: secret(f"{name}_") for name in ("burst", "calm", "capped", "tpm")}
    config = write_config(
        tmp_path_factory.mktemp("fair") / "models.yaml",
        model_store,
        [{"id": "smollm2", **SHARED}, {"id": EMBEDDER, "source": EMBEDDER, "type": "embedding"}],
        services=[
            {"name": "burst", "default_model": "smollm2", "limits": {"max_in_flight": 1, "max_queued": 1}},
            {"name": "calm", "default_model": "smollm2"},
            {"name": "capped", "default_model": "smollm2", "limits": {"max_tokens": 3}},
            {"name": "tpm", "default_model": "smollm2", "rate_limits": {"tokens_per_minute": 100_000}},
        ],
        gateway={"sessions": {"max_per_service": 3}},
    )
    srv = Server(config)
    srv.env["API_KEYS"] = ",".join(f"{name}:{key}" for name, key in keys.items())
    srv.start()
    srv.headers = {name: {"Authorization": f"Bearer {key}"} for name, key in keys.items()}
    yield srv
    srv.stop()


def admission(server: Server, service: str) -> tuple[float, float]:
    """(in flight, queued) of `service`, as /metrics reports them."""
    text = httpx.get(f"{server.url}/metrics", timeout=30).text

    def value(name: str) -> float:
        found = re.search(rf'^mlx_server_admission_{name}\{{service="{service}"\}} (\S+)$', text, re.M)
        return float(found.group(1)) if found else 0.0

    return value("in_flight"), value("queued")


def hold_a_slot(server: Server, headers: dict[str, str]) -> socket.socket:
    """A chat completion whose body never finishes arriving (a slow client): it holds its service's slot until the
    socket closes, however fast the machine generates."""
    conn = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    conn.sendall(
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}Content-Type: application/json\r\n"
        "Content-Length: 1000\r\n\r\n{".encode()
    )
    return conn


def test_a_service_past_its_limits_waits_then_is_refused_while_another_is_served(fair_server):
    url, h = fair_server.url, fair_server.headers
    short = {"messages": ASK, "max_tokens": 2}
    waited: dict[str, httpx.Response] = {}
    first = hold_a_slot(fair_server, h["burst"])
    try:
        assert wait_until(lambda: admission(fair_server, "burst") == (1, 0), timeout=60)

        def second() -> None:  # waits behind the first, in burst's queue
            waited["r"] = httpx.post(f"{url}/v1/chat/completions", json=short, headers=h["burst"], timeout=180)

        thread = threading.Thread(target=second)
        thread.start()
        assert wait_until(lambda: admission(fair_server, "burst") == (1, 1), timeout=60)

        refused = httpx.post(f"{url}/v1/chat/completions", json=short, headers=h["burst"], timeout=60)
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert "limits.max_in_flight" in refused.json()["error"]["message"]
        anthropic = httpx.post(f"{url}/v1/messages", json={**short, "model": "smollm2"}, headers=h["burst"], timeout=60)
        assert anthropic.status_code == 429 and anthropic.json()["type"] == "error"

        served = httpx.post(f"{url}/v1/chat/completions", json=short, headers=h["calm"], timeout=180)
        assert served.status_code == 200, served.text  # another service is not held up
    finally:
        first.close()  # its slot passes to the waiting one
    thread.join(timeout=180)
    assert waited["r"].status_code == 200, waited["r"].text
    assert wait_until(lambda: admission(fair_server, "burst") == (0, 0), timeout=30)


def test_a_services_ceiling_on_tokens_per_answer_holds_whatever_it_asks(fair_server):
    for asked in ({"max_tokens": 50}, {}):
        answer = httpx.post(
            f"{fair_server.url}/v1/chat/completions",
            json={"messages": ASK, "temperature": 0, **asked},
            headers=fair_server.headers["capped"],
            timeout=180,
        ).json()
        assert answer["usage"]["completion_tokens"] <= 3
        assert answer["choices"][0]["finish_reason"] == "length"


def remaining_tokens(server: Server) -> int:
    answer = httpx.get(f"{server.url}/v1/models", headers=server.headers["tpm"], timeout=30)
    return int(answer.headers["x-ratelimit-remaining-tokens"])


def charged_by(server: Server, send) -> int:
    """The tokens `send()` got charged (the charge lands just after the answer: wait for it)."""
    before = remaining_tokens(server)
    expected = send()
    assert wait_until(lambda: remaining_tokens(server) < before, timeout=30)
    charged = before - remaining_tokens(server)
    if expected is not None:
        assert wait_until(lambda: before - remaining_tokens(server) == expected, timeout=30)
        charged = expected
    return charged


def test_tokens_per_minute_charge_aborted_streams_embeddings_and_rerank(fair_server):
    url, h = fair_server.url, fair_server.headers["tpm"]

    def embed() -> int:
        answer = httpx.post(f"{url}/v1/embeddings", json={"input": ["one two three", "four"]}, headers=h, timeout=120)
        return answer.json()["usage"]["prompt_tokens"]

    def rerank() -> int:
        body = {"query": "capital of France", "documents": ["Paris is in France.", "Bananas are yellow."]}
        return httpx.post(f"{url}/v1/rerank", json=body, headers=h, timeout=120).json()["usage"]["prompt_tokens"]

    received = []

    def abort() -> None:
        body = {"messages": ASK, "max_tokens": 200, "stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=h, timeout=120) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:") and '"content"' in line:
                    received.append(line)
                if len(received) == 3:
                    break  # the client leaves: the stream is aborted
        return None

    assert charged_by(fair_server, embed) > 0
    assert charged_by(fair_server, rerank) > 0
    charged = charged_by(fair_server, abort)
    assert 3 < charged < 200  # its prompt and the tokens produced before it left, not max_tokens


def test_the_memory_session_store_is_bounded_per_service(fair_server):
    url, h = fair_server.url, fair_server.headers
    made = [httpx.post(f"{url}/api/v1/sessions", json={}, headers=h["calm"], timeout=30).json()["id"] for _ in range(4)]
    assert httpx.get(f"{url}/api/v1/sessions/{made[0]}", headers=h["calm"], timeout=30).status_code == 404
    listed = httpx.get(f"{url}/api/v1/sessions", headers=h["calm"], timeout=30).json()["data"]
    assert {s["id"] for s in listed} == set(made[1:])
    other = httpx.post(f"{url}/api/v1/sessions", json={}, headers=h["burst"], timeout=30)  # another service's bound
    assert other.status_code == 201
    assert httpx.get(f"{url}/api/v1/sessions/{made[1]}", headers=h["calm"], timeout=30).status_code == 200


def test_the_memory_session_store_expires_sessions_on_a_timer():
    async def run() -> None:
        store = MemorySessionStore(ttl_seconds=1)
        try:
            for _ in range(3):
                await store.create("svc", {}, [])
            deadline = asyncio.get_running_loop().time() + 30
            while store._sessions and asyncio.get_running_loop().time() < deadline:  # nothing touches them
                await asyncio.sleep(0.1)
            assert not store._sessions
        finally:
            await store.close()

    asyncio.run(run())

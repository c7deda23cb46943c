"""The gateway's parts in-process: config, keys, tokens, error shapes, session stores (memory and a real Redis),
and the worker's trimming of long conversations with the bundled model's tokenizer."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import time

import jwt
import pytest

from gateway.auth import LOCAL, Authenticator, KeyRing, TokenIssuer, credential_of, is_loopback
from gateway.config import GatewayConfig, TransportSettings, load_gateway_config
from gateway.dialects.anthropic import is_anthropic_path
from gateway.dialects.chat.session_messages import replayed, stored
from gateway.errors import APIError, error_body
from gateway.sessions import MemorySessionStore, RedisSessionStore
from protocol import ErrorCode
from protocol.generation import ChatMessage, GenerateRequest, SamplingParams, ToolCall
from supervisor.config import load_config
from tests.conftest import MODEL
from tests.harness import ROOT
from worker.prompt_encoding import encode_prompt

SECRET = "x" * 40


def config_from(tmp_path, text: str) -> GatewayConfig:
    path = tmp_path / "models.yaml"
    path.write_text("models:\n  - {id: a, aliases: [alpha], source: x}\n  - {id: b, source: y}\n" + text)
    return load_gateway_config(path)


SERVICES = """
services:
  - name: vista
    key_sha256: [{digest}]
    allowed_models: [alpha]
  - name: fork
    key_prefix: "fk-"
    key_env: FORK_KEYS
  - name: ops
    admin: true
"""


def ring(tmp_path, environ=None, key="vista_abc") -> KeyRing:
    config = config_from(tmp_path, SERVICES.format(digest=hashlib.sha256(key.encode()).hexdigest()))
    return KeyRing(config, {"FORK_KEYS": "fk-default"} | (environ or {}))  # fork's key_env must be set


# -- config and keys ------------------------------------------------------------------------------------------


def test_keys_from_hashes_named_variables_and_api_keys(tmp_path):
    keys = ring(tmp_path, {"FORK_KEYS": "fk-one, fk-two", "API_KEYS": "ops:ops_1,vista:vista_2"})
    assert keys.lookup("vista_abc")[0].name == "vista"
    assert keys.lookup("vista_2")[0].name == "vista"
    assert keys.lookup("fk-two")[0].name == "fork"
    assert keys.lookup("ops_1")[0].admin is True
    assert keys.lookup("vista_ab") is None and keys.lookup("") is None
    assert keys.services["vista"].allowed_models == ("alpha",)
    assert keys.services["fork"].allowed_models is None  # "any" by default


@pytest.mark.parametrize(
    ("environ", "complaint"),
    [
        ({"API_KEYS": "ghost:ghost_1"}, "ghost"),
        ({"API_KEYS": "vista"}, "service:key"),
        ({"API_KEYS": "vista:nope"}, "must start with 'vista_'"),
        ({"FORK_KEYS": "vista_1"}, "must start with 'fk-'"),
    ],
)
def test_bad_keys_are_refused_without_echoing_them(tmp_path, environ, complaint):
    with pytest.raises(ValueError, match=complaint) as caught:
        ring(tmp_path, environ)
    assert "nope" not in str(caught.value) and "vista_1" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("services:\n  - {name: Bad Name}\n", "service name"),
        ("services:\n  - {name: a, key_sha256: [abc]}\n", "64 hex digits"),
        ("services:\n  - {name: a, alowed_models: any}\n", "alowed_models"),
        ("services:\n  - {name: a, allowed_models: some}\n", "allowed_models"),
        ("services:\n  - {name: a}\n  - {name: a}\n", "twice"),
        ("gateway: {max_body_byte: 3}\n", "max_body_byte"),
    ],
)
def test_bad_service_configs_are_refused(tmp_path, text, complaint):
    with pytest.raises(ValueError, match=complaint):
        config_from(tmp_path, text)


def test_the_supervisor_accepts_the_gateways_sections(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text(
        "models:\n  - {id: a, aliases: [alpha], source: x}\n  - {id: b, source: y}\n"
        "services:\n  - {name: vista}\ngateway: {cors_origins: [https://x.example]}\n"
    )
    config = load_config(path)
    assert config.allows(config.models["a"], ["alpha"]) and not config.allows(config.models["b"], ["alpha"])
    assert config.allows(config.models["b"], None) and not config.allows(config.models["b"], [])
    assert load_gateway_config(path).transport.cors_origins == ["https://x.example"]


def test_credentials_from_bearer_or_x_api_key():
    assert credential_of({"authorization": "Bearer k1"}) == "k1"
    assert credential_of({"authorization": "bearer  k1 "}) == "k1"
    assert credential_of({"x-api-key": "k2"}) == "k2"
    assert credential_of({"authorization": "Basic abc", "x-api-key": "k2"}) == "k2"
    assert credential_of({}) is None


def test_keyless_mode_is_the_local_admin_service(tmp_path):
    keys = KeyRing(config_from(tmp_path, "services:\n  - {name: vista}\n"), {})
    assert keys.keyless
    assert Authenticator(keys, TokenIssuer(None, 60, keys)).authenticate({})[0] is LOCAL
    assert LOCAL.name == "local" and LOCAL.admin
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.2") and not is_loopback("example.com")


def test_tokens_carry_the_service_and_die_with_their_key(tmp_path):
    keys = ring(tmp_path, {"FORK_KEYS": "fk-one"})
    issuer = TokenIssuer(SECRET, 60, keys)
    service, digest = keys.lookup("fk-one")
    token, ttl = issuer.issue(service, digest)
    assert ttl == 60 and issuer.verify(token) is service
    assert issuer.issue(service, digest, ttl=3600)[1] == 60  # never longer than configured
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "fork" and claims["exp"] - claims["iat"] == 60
    assert "fk-one" not in token  # the key is not in the token, only its fingerprint
    rotated = ring(tmp_path, {"FORK_KEYS": "fk-two"})  # the key was replaced: its tokens stop working
    with pytest.raises(APIError, match="no longer valid"):
        TokenIssuer(SECRET, 60, rotated).verify(token)
    with pytest.raises(ValueError, match="JWT_SECRET"):
        TokenIssuer("short", 60, keys)


# -- error shapes ---------------------------------------------------------------------------------------------


def test_one_function_chooses_the_error_shape_by_path():
    assert is_anthropic_path("/v1/messages") and is_anthropic_path("/v1/messages/count_tokens")
    assert is_anthropic_path("/anthropic/v1/messages")
    assert not is_anthropic_path("/v1/messages-archive") and not is_anthropic_path("/v1/chat/completions")
    error = APIError(ErrorCode.INVALID_API_KEY, "Invalid API key")
    assert error.status == 401
    assert error.body("/v1/messages") == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "Invalid API key"},
    }
    assert error.body("/v1/chat/completions") == {
        "error": {
            "message": "Invalid API key",
            "type": "authentication_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    for code, kind in (
        (ErrorCode.MODEL_NOT_ALLOWED, "permission_error"),
        (ErrorCode.RATE_LIMITED, "rate_limit_error"),
        (ErrorCode.SESSION_NOT_FOUND, "not_found_error"),
        (ErrorCode.REQUEST_TOO_LARGE, "request_too_large"),
        (ErrorCode.WORKER_UNAVAILABLE, "overloaded_error"),
        (ErrorCode.INTERNAL, "api_error"),
    ):
        assert APIError(code, "m").body("/anthropic/v1/messages")["error"]["type"] == kind
    assert error_body("/x", 418, "teapot", "m", "invalid_request_error")["error"]["code"] == "teapot"
    assert TransportSettings().trusted_hosts == ["*"]


# -- session stores -------------------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
def make_store(request):
    """A factory of stores of one backend, each with the TTL it is given."""
    if request.param == "memory":
        yield MemorySessionStore
        return
    redis = request.getfixturevalue("redis_server")
    stores = []

    def make(ttl):
        store = RedisSessionStore(redis.url, ttl, prefix=f"t{time.monotonic_ns()}")
        stores.append(store)
        return store

    yield make


def test_store_contract(make_store):
    async def scenario():
        store = make_store(60)
        first = await store.create("vista", {"k": "v"}, [{"role": "system", "content": "s"}])
        assert first.id.startswith("sess_") and first.message_count == 1
        second = await store.create("vista", {}, [])
        other = await store.create("fork", {}, [])
        assert await store.append("vista", first.id, [{"role": "user", "content": "q"}]) == 2
        assert await store.messages("vista", first.id) == [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "q"},
        ]
        info = await store.get("vista", first.id)
        assert info.metadata == {"k": "v"} and info.message_count == 2 and info.service == "vista"
        assert [s.id for s in await store.list("vista")] == [first.id, second.id]  # most recently used first
        assert [s.id for s in await store.list("fork")] == [other.id]
        # Another service's session does not exist for it.
        assert await store.get("fork", first.id) is None
        assert await store.messages("fork", first.id) is None
        assert await store.append("fork", first.id, [{"role": "user", "content": "x"}]) is None
        assert await store.delete("fork", first.id) is False
        assert await store.get("vista", "sess_nope") is None
        assert await store.delete("vista", first.id) is True
        assert await store.get("vista", first.id) is None
        assert await store.append("vista", first.id, [{"role": "user", "content": "x"}]) is None
        await store.close()

    asyncio.run(scenario())


def test_store_appends_concurrently_without_loss(make_store):
    async def scenario():
        store = make_store(60)
        session = await store.create("vista", {}, [])
        turns = [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}] for i in range(50)]
        await asyncio.gather(*(store.append("vista", session.id, t) for t in turns))
        messages = await store.messages("vista", session.id)
        assert len(messages) == 100
        for i in range(0, 100, 2):  # each question directly followed by its own answer
            assert messages[i]["content"][1:] == messages[i + 1]["content"][1:]
        await store.close()

    asyncio.run(scenario())


def test_sessions_expire_after_their_ttl_unless_used(make_store):
    async def scenario():
        store = make_store(2)
        used = await store.create("vista", {}, [{"role": "user", "content": "q"}])
        idle = await store.create("vista", {}, [{"role": "user", "content": "q"}])
        deadline = time.monotonic() + 60  # a generous bound on waiting for the 2 s TTL, not a timing claim
        # Listing renews nothing; reading `used`'s messages renews it. Poll until `idle` has expired.
        while idle.id in [s.id for s in await store.list("vista")]:
            assert await store.messages("vista", used.id) is not None  # each use renews it
            assert time.monotonic() < deadline, "the idle session never expired"
            await asyncio.sleep(0.1)
        renewed = await store.get("vista", used.id)  # used the whole time: still there, its expiry pushed on
        assert renewed is not None and renewed.expires_at > used.expires_at
        assert await store.get("vista", idle.id) is None
        assert [s.id for s in await store.list("vista")] == [used.id]
        await store.close()

    asyncio.run(scenario())


def test_stored_messages_keep_tool_calls_and_replay_as_sent():
    call = ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')
    conversation = [
        ChatMessage(role="user", content="Weather in Paris?"),
        ChatMessage(role="assistant", content="", tool_calls=[call]),
        ChatMessage(role="tool", content="Sunny", tool_call_id="call_1", name="get_weather"),
    ]
    kept = [stored(m) for m in conversation]
    assert kept[1]["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    ]
    assert kept[2] == {"role": "tool", "content": "Sunny", "tool_call_id": "call_1", "name": "get_weather"}
    assert [replayed(json.loads(json.dumps(m))) for m in kept] == conversation  # through the store's JSON
    # What clients send (content null beside tool calls) and what older sessions hold (text only) replay too.
    assert replayed({**kept[1], "content": None}) == conversation[1]
    assert replayed({"role": "user", "content": "Hi"}) == ChatMessage(role="user", content="Hi")


# -- trimming (worker side) -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(model_store):
    from mlx_lm.utils import load_tokenizer

    return load_tokenizer(model_store / MODEL)


def test_trimming_drops_the_oldest_turns_and_keeps_the_system_message(tokenizer):
    turn = "Tell me about the weather in spring. " * 10
    messages = [ChatMessage(role="system", content="You are the weather bot SYS-MARK.")]
    for i in range(10):
        messages += [ChatMessage(role="user", content=f"U{i} {turn}"), ChatMessage(role="assistant", content=turn)]
    messages.append(ChatMessage(role="user", content="LAST question?"))

    def request(trim: bool, max_tokens=32):
        return GenerateRequest(
            request_id="r", messages=messages, sampling=SamplingParams(max_tokens=max_tokens), trim_history=trim
        )

    full = encode_prompt(tokenizer, request(False), 512)
    assert len(full) > 512
    trimmed = encode_prompt(tokenizer, request(True), 512)
    assert len(trimmed) <= 512 - 32
    text = tokenizer.decode(trimmed)
    assert "SYS-MARK" in text and "LAST question?" in text
    assert "U0 " not in text and "U9 " in text  # the oldest went first
    assert len(encode_prompt(tokenizer, request(True), 4096)) == len(full)  # fits: untouched
    assert len(encode_prompt(tokenizer, request(True, max_tokens=None), 512)) <= 512 - 128


def test_the_shipped_configs_parse_for_gateway_and_supervisor():
    for name in ("models.yaml", "models.m3-ultra.yaml"):
        path = ROOT / "configs" / name
        load_config(path)
        assert load_gateway_config(path).services
    production = load_gateway_config(ROOT / "configs" / "models.m3-ultra.yaml")
    assert {"vista", "fork", "whisp", "anydatanext", "lbrxvoice"} <= set(production.services)
    assert all(s.key_env or s.key_sha256 for s in production.services.values())  # every service can get keys
    # None is in the file: they come from the environment, and a variable left unset stops the gateway.
    with pytest.raises(ValueError, match="VISTA_API_KEYS is unset or empty"):
        KeyRing(production, {})
    environ = {spec.key_env: f"{name}_k" for name, spec in production.services.items() if spec.key_env}
    assert KeyRing(production, environ).lookup("vista_k")[0].default_model == "qwen3-14b"
    with pytest.raises(ValueError, match="'fork': its key_env variable FORK_API_KEYS"):
        KeyRing(production, environ | {"FORK_API_KEYS": " "})


FIRST_STREAM = """
import asyncio, sys
from gateway import sse

async def main():
    if sys.argv[1] == "primed":
        await sse.prime()
    before = set(sys.modules)

    async def events():
        yield sse.sse({"n": 1})

    async def receive():  # a client that stays
        await asyncio.Event().wait()

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}}  # as uvicorn sends it
    await sse.EventStreamResponse(events(), on_close=lambda: None)(scope, receive, send)
    assert sent[1]["body"] == b'data: {"n":1}\\n\\n', sent
    print(" ".join(sorted(set(sys.modules) - before)))

asyncio.run(main())
"""


def test_the_first_stream_after_startup_imports_nothing():
    """A stream runs in an anyio task group that anyio imports on first use; the gateway's startup takes that import,
    so the first client to stream does not wait on it with its first tokens."""

    def imported_by_first_stream(mode: str) -> set[str]:
        run = subprocess.run(
            [sys.executable, "-c", FIRST_STREAM, mode], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 0, run.stderr
        return set(run.stdout.split())

    assert imported_by_first_stream("primed") == set()
    assert imported_by_first_stream("cold")  # what the priming is for: without it, the first stream imports

"""Service keys, routing by service, JWT, rate limits and transport hygiene, through the real server (openai and
anthropic SDKs where they fit)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import anthropic
import httpx
import jwt
import openai
import pytest

from tests.conftest import SECURE_BODY_LIMIT, TEST_SECRETS
from tests.harness import ROOT, free_port, track, wait_until

PARIS = [{"role": "user", "content": "What is the capital of France?"}]


def openai_client(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=120)


def chat(server, key: str | None = None, headers: dict | None = None, **body) -> httpx.Response:
    headers = dict(headers or {})
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    payload = {"messages": PARIS, "temperature": 0, "max_tokens": 4} | body
    return httpx.post(f"{server.url}/v1/chat/completions", json=payload, headers=headers, timeout=120)


def assert_openai_error(reply: httpx.Response, status: int, code: str) -> dict:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["code"] == code
    assert error["message"] and "type" in error and "param" in error
    return error


# -- keys ----------------------------------------------------------------------------------------------------


def test_bearer_key_from_a_config_hash_works_with_the_openai_sdk(secure_server, keys):
    reply = openai_client(secure_server, keys.vista).chat.completions.create(
        model="smollm2", messages=PARIS, temperature=0, max_tokens=16
    )
    assert "Paris" in reply.choices[0].message.content


def test_keys_from_api_keys_and_from_a_named_variable_work(secure_server, keys):
    assert chat(secure_server, keys.fork).status_code == 200
    assert chat(secure_server, keys.ops, model="smollm2").status_code == 200


def test_x_api_key_header_works(secure_server, keys):
    reply = chat(secure_server, headers={"x-api-key": keys.vista})
    assert reply.status_code == 200
    assert reply.json()["model"] == "smollm2"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dmlzdGE6eA=="},
        {"Authorization": "Bearer vista_not-a-real-key"},
        {"x-api-key": "fork_wrong"},
        {"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ2aXN0YSJ9.c2lnbmF0dXJl"},
    ],
)
def test_missing_or_wrong_credentials_are_401(secure_server, headers):
    error = assert_openai_error(chat(secure_server, headers=headers), 401, "invalid_api_key")
    assert error["type"] == "authentication_error"
    listing = httpx.get(f"{secure_server.url}/v1/models", headers=headers)
    assert_openai_error(listing, 401, "invalid_api_key")


def test_wrong_key_is_an_authentication_error_in_the_openai_sdk(secure_server):
    with pytest.raises(openai.AuthenticationError) as caught:
        openai_client(secure_server, "vista_guess").chat.completions.create(model="smollm2", messages=PARIS)
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"


def test_health_needs_no_key(secure_server):
    assert httpx.get(f"{secure_server.url}/api/v1/health").status_code == 200


# -- the Anthropic SDK's header and error shape ---------------------------------------------------------------


def test_anthropic_sdk_authenticates_with_x_api_key(secure_server, keys):
    # The SDK sends its key in x-api-key (older releases always; newer ones when given it as a header) or as a
    # Bearer token: both work.
    by_header = anthropic.Anthropic(
        base_url=secure_server.url, api_key=None, default_headers={"x-api-key": keys.vista}, max_retries=0
    )
    raw = by_header.models.with_raw_response.list()  # GET /v1/models
    assert raw.http_request.headers["x-api-key"] == keys.vista
    assert "authorization" not in raw.http_request.headers
    assert [m.id for m in raw.parse().data] == ["smollm2"]
    by_key = anthropic.Anthropic(base_url=secure_server.url, api_key=keys.vista, max_retries=0)
    assert [m.id for m in by_key.models.list().data] == ["smollm2"]


def test_anthropic_paths_answer_auth_errors_in_anthropics_shape(secure_server):
    client = anthropic.Anthropic(base_url=secure_server.url, api_key="vista_wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as caught:
        client.messages.create(model="smollm2", max_tokens=4, messages=PARIS)
    assert caught.value.status_code == 401
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "Invalid API key"},
    }
    for path in ("/v1/messages/count_tokens", "/anthropic/v1/messages"):
        reply = httpx.post(f"{secure_server.url}{path}", json={})
        assert reply.status_code == 401
        assert reply.json()["type"] == "error"
        assert reply.json()["error"]["type"] == "authentication_error"


# -- routing by service ---------------------------------------------------------------------------------------


def test_no_model_means_the_services_default(secure_server, keys):
    body = {"messages": PARIS, "temperature": 0, "max_tokens": 2}
    for key, model in ((keys.vista, "smollm2"), (keys.fork, "coder")):
        reply = httpx.post(
            f"{secure_server.url}/v1/chat/completions", json=body, headers={"x-api-key": key}, timeout=120
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["model"] == model


def test_an_alias_resolves_before_the_allowed_check(secure_server, keys):
    # vista's allowed list names the alias "tiny"; the id and the alias both reach the same model.
    assert chat(secure_server, keys.vista, model="smollm2").json()["model"] == "smollm2"
    assert chat(secure_server, keys.vista, model="tiny").json()["model"] == "smollm2"


def test_a_model_the_service_may_not_use_is_403(secure_server, keys):
    with pytest.raises(openai.PermissionDeniedError) as caught:
        openai_client(secure_server, keys.vista).chat.completions.create(model="coder", messages=PARIS, max_tokens=2)
    assert caught.value.status_code == 403
    assert caught.value.code == "model_not_allowed"
    stream = chat(secure_server, keys.fork, model="tiny", stream=True)
    assert_openai_error(stream, 403, "model_not_allowed")


def test_an_unknown_model_is_still_404(secure_server, keys):
    error = assert_openai_error(chat(secure_server, keys.vista, model="gpt-17"), 404, "model_not_found")
    assert "coder" not in error["message"]  # the known models listed are the service's own


def test_models_list_shows_the_services_models(secure_server, keys):
    def ids(key):
        return [m.id for m in openai_client(secure_server, key).models.list().data]

    assert ids(keys.vista) == ["smollm2"]
    assert ids(keys.fork) == ["coder"]
    assert sorted(ids(keys.ops)) == ["coder", "short", "smollm2", "thinker"]


def test_loading_and_unloading_need_an_admin_service(secure_server, keys):
    for path in ("/api/v1/models/smollm2/load", "/api/v1/models/coder/unload"):
        reply = httpx.post(f"{secure_server.url}{path}", headers={"x-api-key": keys.vista}, timeout=120)
        assert_openai_error(reply, 403, "permission_denied")
    reply = httpx.post(f"{secure_server.url}/api/v1/models/smollm2/load", headers={"x-api-key": keys.ops}, timeout=120)
    assert reply.status_code == 200 and reply.json()["status"] == "loaded"


# -- JWT ----------------------------------------------------------------------------------------------------


def token_for(server, key: str, **body) -> dict:
    reply = httpx.post(f"{server.url}/api/v1/auth/token", headers={"Authorization": f"Bearer {key}"}, json=body)
    assert reply.status_code == 200, reply.text
    TEST_SECRETS.append(reply.json()["access_token"])  # no server log may hold it
    return reply.json()


def test_a_token_works_as_a_bearer_credential_with_the_same_rights(secure_server, keys):
    issued = token_for(secure_server, keys.vista)
    assert issued["token_type"] == "bearer" and issued["service"] == "vista"
    assert 0 < issued["expires_in"] <= 900
    client = openai_client(secure_server, issued["access_token"])
    reply = client.chat.completions.create(model="tiny", messages=PARIS, temperature=0, max_tokens=16)
    assert "Paris" in reply.choices[0].message.content
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="coder", messages=PARIS, max_tokens=2)
    assert chat(secure_server, headers={"x-api-key": issued["access_token"]}).status_code == 200


def test_expired_tampered_and_foreign_tokens_are_401(secure_server, keys):
    issued = token_for(secure_server, keys.vista)
    claims = jwt.decode(issued["access_token"], options={"verify_signature": False})
    now = int(time.time())
    expired = jwt.encode(claims | {"iat": now - 120, "exp": now - 60}, keys.jwt_secret, algorithm="HS256")
    header, _, signature = issued["access_token"].split(".")
    forged_claims = jwt.utils.base64url_encode(json.dumps(claims | {"sub": "ops"}).encode()).decode()
    tampered = f"{header}.{forged_claims}.{signature}"
    foreign = jwt.encode(claims, "another-secret-that-is-long-enough-for-hs256!!", algorithm="HS256")
    unsigned = jwt.encode(claims, None, algorithm="none")
    for token, says in ((expired, "expired"), (tampered, "invalid"), (foreign, "invalid"), (unsigned, "invalid")):
        error = assert_openai_error(chat(secure_server, token), 401, "invalid_api_key")
        assert says in error["message"]


def test_a_token_stops_working_when_its_own_ttl_runs_out(secure_server, keys):
    issued = token_for(secure_server, keys.vista, expires_in=5)  # less than the configured TTL: granted as asked
    assert issued["expires_in"] == 5
    claims = jwt.decode(issued["access_token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 5
    bearer = {"Authorization": f"Bearer {issued['access_token']}"}
    assert httpx.get(f"{secure_server.url}/v1/models", headers=bearer).status_code == 200
    # Polled until the server refuses it on its own (generous deadline; the token says 5 s).
    assert wait_until(lambda: httpx.get(f"{secure_server.url}/v1/models", headers=bearer).status_code == 401, 60)
    error = assert_openai_error(httpx.get(f"{secure_server.url}/v1/models", headers=bearer), 401, "invalid_api_key")
    assert "expired" in error["message"]


def test_a_token_cannot_be_exchanged_for_another(secure_server, keys):
    issued = token_for(secure_server, keys.vista, expires_in=30)
    assert issued["expires_in"] == 30
    reply = httpx.post(
        f"{secure_server.url}/api/v1/auth/token", headers={"Authorization": f"Bearer {issued['access_token']}"}
    )
    assert_openai_error(reply, 401, "invalid_api_key")
    assert_openai_error(httpx.post(f"{secure_server.url}/api/v1/auth/token"), 401, "invalid_api_key")


# -- rate limits --------------------------------------------------------------------------------------------


def test_two_gateways_share_one_requests_per_minute_limit(secure_server, keys):
    """metered may make 5 requests a minute: across two gateway processes counting in one Redis, exactly 5 of
    10 are admitted."""
    other = secure_server.spawn_gateway().wait_ready()
    urls = [secure_server.url, other.url]
    replies = [
        httpx.get(f"{urls[i % 2]}/v1/models", headers={"Authorization": f"Bearer {keys.metered}"}, timeout=30)
        for i in range(10)
    ]
    statuses = [r.status_code for r in replies]
    assert statuses.count(200) == 5 and statuses.count(429) == 5, statuses
    assert statuses[:5] == [200] * 5
    ok, limited = replies[0], replies[-1]
    assert ok.headers["x-ratelimit-limit"] == "5"
    assert ok.headers["x-ratelimit-remaining"] == "4"
    assert ok.headers["x-ratelimit-limit-requests"] == "5"
    assert 0 < int(ok.headers["x-ratelimit-reset"]) <= 60
    assert limited.headers["x-ratelimit-remaining"] == "0"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert_openai_error(limited, 429, "rate_limit_exceeded")
    with pytest.raises(openai.RateLimitError):
        openai_client(secure_server, keys.metered).models.list()
    other.stop()


def test_tokens_per_minute_are_charged_after_each_answer(secure_server, keys):
    first = chat(secure_server, keys.thrifty)  # the window is empty: admitted, then charged its ~40 tokens
    assert first.status_code == 200, first.text
    assert first.json()["usage"]["total_tokens"] > 20
    second = chat(secure_server, keys.thrifty)
    error = assert_openai_error(second, 429, "rate_limit_exceeded")
    assert "tokens" in error["message"]
    assert second.headers["x-ratelimit-remaining-tokens"] == "0"
    assert second.headers["x-ratelimit-limit-tokens"] == "20"
    assert int(second.headers["retry-after"]) >= 1


def test_rate_limit_errors_on_anthropic_paths_have_anthropics_shape(secure_server, keys):
    for _ in range(6):
        reply = httpx.post(f"{secure_server.url}/v1/messages", headers={"x-api-key": keys.metered}, json={})
    assert reply.status_code == 429
    assert reply.json()["error"]["type"] == "rate_limit_error"


# -- transport ----------------------------------------------------------------------------------------------


def test_request_ids_are_returned_passed_to_the_worker_and_logged(secure_server, keys):
    reply = chat(secure_server, keys.vista, headers={"X-Request-ID": "trace-5c0ffee"})
    assert reply.headers["x-request-id"] == "trace-5c0ffee"
    generated = chat(secure_server, keys.vista)
    assert generated.headers["x-request-id"].startswith("req_")
    garbage = chat(secure_server, keys.vista, headers={"X-Request-ID": "no spaces\tor tabs"})
    assert garbage.headers["x-request-id"].startswith("req_")
    assert httpx.get(f"{secure_server.url}/v1/nothing").headers["x-request-id"].startswith("req_")  # errors too

    def logged():
        log = secure_server.log_text()
        return "[x-request-id trace-5c0ffee] finished" in log and '"request_id": "trace-5c0ffee"' in log

    assert wait_until(logged, timeout=30), "the worker and the gateway log the request id"


def test_gateway_logs_are_json_lines_with_request_ids(secure_server, keys):
    chat(secure_server, keys.vista, headers={"X-Request-ID": "json-log-check"})
    assert wait_until(lambda: "json-log-check" in secure_server.log_text(), timeout=30)
    entries = [json.loads(line) for line in secure_server.log_text().splitlines() if line.startswith('{"ts"')]
    access = [e for e in entries if e["logger"] == "gateway.access" and e.get("request_id") == "json-log-check"]
    assert access and access[0]["status"] == 200 and access[0]["service"] == "vista"
    assert access[0]["path"] == "/v1/chat/completions" and "duration_ms" in access[0]
    assert all("request_id" in e for e in entries if e["logger"] == "gateway.access")


def test_bodies_over_the_limit_are_413(secure_server, keys):
    big = {"messages": [{"role": "user", "content": "x" * SECURE_BODY_LIMIT}]}
    headers = {"x-api-key": keys.vista}
    reply = httpx.post(f"{secure_server.url}/v1/chat/completions", json=big, headers=headers)
    assert_openai_error(reply, 413, "request_too_large")

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(20):
            yield b"x" * 8192

    streamed = httpx.post(f"{secure_server.url}/v1/chat/completions", content=chunks(), headers=headers)
    assert_openai_error(streamed, 413, "request_too_large")
    anthropic_shape = httpx.post(f"{secure_server.url}/v1/messages", json=big, headers=headers)
    assert anthropic_shape.status_code == 413
    assert anthropic_shape.json()["error"]["type"] == "request_too_large"


def test_untrusted_host_headers_are_400(secure_server, keys):
    reply = httpx.get(f"{secure_server.url}/v1/models", headers={"Host": "evil.test", "x-api-key": keys.vista})
    assert_openai_error(reply, 400, "invalid_host")
    allowed = httpx.get(f"{secure_server.url}/v1/models", headers={"Host": "api.example.com", "x-api-key": keys.vista})
    assert allowed.status_code == 200


def test_cors_allows_only_the_configured_origins(secure_server, keys):
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    url = f"{secure_server.url}/v1/chat/completions"
    ok = httpx.options(url, headers={"Origin": "https://dashboard.example"} | preflight)
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "https://dashboard.example"
    refused = httpx.options(url, headers={"Origin": "https://evil.example"} | preflight)
    assert_openai_error(refused, 400, "invalid_request")
    assert "access-control-allow-origin" not in refused.headers
    simple = httpx.get(
        f"{secure_server.url}/v1/models", headers={"Origin": "https://dashboard.example", "x-api-key": keys.vista}
    )
    assert simple.headers["access-control-allow-origin"] == "https://dashboard.example"
    assert "x-request-id" in simple.headers["access-control-expose-headers"]
    foreign = httpx.get(
        f"{secure_server.url}/v1/models", headers={"Origin": "https://evil.example", "x-api-key": keys.vista}
    )
    assert "access-control-allow-origin" not in foreign.headers


# -- start-up -----------------------------------------------------------------------------------------------


def gateway_alone(config, **env) -> subprocess.Popen:
    """A gateway expected to refuse to start: the caller reads its output until it exits."""
    import os

    base = {k: v for k, v in os.environ.items() if k not in ("API_KEYS", "REDIS_URL", "JWT_SECRET")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway"],
        env=base | {"MLX_SERVER_CONFIG": str(config), "PORT": str(free_port()), "HOST": "127.0.0.1"} | env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    track(proc.pid)
    return proc


def test_no_keys_on_a_public_address_refuses_to_start(server_config):
    proc = gateway_alone(server_config, HOST="0.0.0.0")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "refusing to start" in out and "no API keys" in out


def test_no_keys_on_loopback_says_so_at_start(server):
    assert "development mode without authentication" in server.log_text()


def test_bad_key_configuration_refuses_to_start(secure_config, keys):
    for env, says in (
        ({"API_KEYS": "nobody:nobody_x"}, "nobody"),
        ({"API_KEYS": "fork:wrongprefix"}, "must start with 'fork_'"),
        ({"API_KEYS": "fork_no_colon"}, "service:key"),
        ({"JWT_SECRET": "short"}, "JWT_SECRET"),
    ):
        proc = gateway_alone(secure_config, OPS_KEYS=keys.ops, **env)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 2, out
        assert says in out
        assert "wrongprefix" not in out  # a key is never echoed, even a bad one


def test_create_key_prints_a_working_key_once(secure_config, tmp_path):
    made = subprocess.run(
        [sys.executable, "-m", "gateway", "create-key", "fork", "--config", str(secure_config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("fork_") and len(key) > 40
    hashed = subprocess.run(
        [sys.executable, "-m", "gateway", "hash-key"], input=key, cwd=ROOT, capture_output=True, text=True
    )
    digest = hashed.stdout.strip()
    assert digest in made.stderr and key not in made.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "gateway", "create-key", "nobody", "--config", str(secure_config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1 and "vista" in missing.stderr

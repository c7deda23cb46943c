"""Fuzzing the edge of the secured server: random or malformed requests (bodies, headers, methods and paths;
with no credential, a wrong one, or a real service key) never get a 5xx, every error is in the API's own shape
(Anthropic's on the Anthropic paths), and the server still answers normally afterwards. Valid requests with
hostile values, delivered to a worker, are tests/test_properties.py's."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.dialects.anthropic import is_anthropic_path

EXAMPLES = 600
PARIS = [{"role": "user", "content": "What is the capital of France?"}]

printable = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
roles = st.sampled_from(["system", "developer", "user", "assistant", "tool"]) | st.text(max_size=10)
content = (
    st.text(max_size=60)
    | st.none()
    | st.lists(
        st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "audio"]), "text": st.text(max_size=20)}),
        max_size=3,
    )
    | json_values
)
message = st.fixed_dictionaries({"role": roles}, optional={"content": content, "name": json_values})
messages = st.lists(message, max_size=4) | json_values


def random_chat(session_ids):
    return st.fixed_dictionaries(
        {"messages": st.just(PARIS) | messages, "max_tokens": st.integers(1, 3) | json_values},
        optional={
            "model": st.sampled_from(["smollm2", "tiny", "coder", "short", "gpt-17", ""]) | json_values,
            "temperature": json_values,
            "stream": json_values,
            "session_id": st.sampled_from(session_ids) | printable | json_values,
        },
    )


ENDPOINTS = [
    ("POST", "/v1/chat/completions"),
    ("POST", "/api/v1/chat/completions"),
    ("GET", "/v1/models"),
    ("GET", "/api/v1/models"),
    ("GET", "/api/v1/health"),
    ("GET", "/health"),
    ("GET", "/api/v1/models/memory/usage"),
    ("POST", "/api/v1/models/{id}/load"),
    ("POST", "/api/v1/models/{id}/unload"),
    ("GET", "/api/v1/models/pulls"),
    ("GET", "/api/v1/aliases"),  # not POST: an alias a fuzzed admin call added would stay in the shared store
    ("POST", "/api/v1/sessions"),
    ("GET", "/api/v1/sessions"),
    ("GET", "/api/v1/sessions/{id}"),
    ("GET", "/api/v1/sessions/{id}/messages"),
    ("DELETE", "/api/v1/sessions/{id}"),
    ("POST", "/api/v1/auth/token"),
    ("POST", "/v1/messages"),
    ("POST", "/v1/messages/count_tokens"),
    ("POST", "/anthropic/v1/messages"),
]
path_segment = st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="/?#%"), max_size=20)


@st.composite
def requests(draw, credentials, session_ids):
    method, path = draw(st.sampled_from(ENDPOINTS))
    if draw(st.integers(0, 9)) == 0:  # another method on a known path
        method = draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]))
    if draw(st.integers(0, 9)) == 0:  # a path nobody routes
        path = draw(st.sampled_from(["/v1/", "/api/v1/", "/", "/anthropic/"])) + draw(path_segment)
    path = path.replace("{id}", draw(st.sampled_from([*session_ids, "smollm2"]) | path_segment.filter(bool)))
    headers = {}
    credential = draw(printable) if draw(st.integers(0, 9)) == 0 else draw(st.sampled_from(credentials))
    if credential:
        style = draw(st.sampled_from(["bearer"] * 5 + ["x-api-key"] * 4 + ["raw"]))
        if style == "bearer":
            headers["Authorization"] = f"Bearer {credential}"
        elif style == "x-api-key":
            headers["x-api-key"] = credential
        else:
            headers["Authorization"] = credential
    if draw(st.booleans()):
        headers["X-Request-ID"] = draw(printable)
    headers["Content-Type"] = draw(st.sampled_from(["application/json", "text/plain", "multipart/form-data"]))
    if draw(st.integers(0, 19)) == 0:
        headers["Host"] = draw(st.sampled_from(["evil.test", "api.example.com", "127.0.0.1"]))
    if draw(st.integers(0, 19)) == 0:
        headers["Origin"] = draw(st.sampled_from(["https://dashboard.example", "https://evil.example"]))
        headers["Access-Control-Request-Method"] = draw(st.sampled_from(["POST", "GET", "TRACE"]))
    # HTTP forbids leading and trailing whitespace in header values; the client would refuse to send them.
    headers = {name: value.strip() for name, value in headers.items() if value.strip()}
    kind = draw(st.sampled_from(["chat", "json", "json", "bytes", "none"]))
    if kind == "chat":  # a request with random values in every field: it rarely passes validation
        body = json.dumps(draw(random_chat(session_ids))).encode()
    elif kind == "json":
        body = json.dumps(draw(json_values)).encode()
    elif kind == "bytes":
        body = draw(st.binary(max_size=300))
    else:
        body = b""
    return method, path, headers, body


def check(reply: httpx.Response, method: str, path: str) -> None:
    assert reply.status_code < 500, (method, path, reply.status_code, reply.text[:500])
    if reply.status_code < 400 or method == "HEAD":
        return
    body = reply.json()
    if is_anthropic_path(path):
        assert body["type"] == "error", body
        assert isinstance(body["error"]["type"], str) and isinstance(body["error"]["message"], str), body
    else:
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}, body
        assert isinstance(error["message"], str) and isinstance(error["type"], str), body
        assert isinstance(error["code"], str), body


@pytest.mark.timeout(1500)
def test_fuzzed_requests_get_no_5xx_and_errors_in_the_apis_shape(secure_server, keys):
    headers = {"x-api-key": keys.vista}
    made = httpx.post(f"{secure_server.url}/api/v1/sessions", json={}, headers=headers)
    session_ids = [made.json()["id"], "sess_unknown"]
    token = httpx.post(f"{secure_server.url}/api/v1/auth/token", headers=headers).json()["access_token"]
    # Not the admin key: an admin could unload the models the other requests need.
    credentials = [keys.vista] * 4 + [keys.fork] * 2 + [keys.fuzzed, token, "vista_wrong", token[:-4] + "AAAA", ""]
    sent = []
    client = httpx.Client(base_url=secure_server.url, timeout=120)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(requests(credentials, session_ids))
    def fuzz(request):
        method, path, request_headers, body = request
        reply = client.request(method, path, headers=request_headers, content=body)
        sent.append(reply.status_code)
        check(reply, method, path)

    fuzz()
    assert len(sent) >= EXAMPLES * 0.9
    assert {200, 400, 401, 403, 404} <= set(sent)  # the requests reached many different outcomes
    reply = client.post(
        "/v1/chat/completions",
        json={"messages": PARIS, "temperature": 0, "max_tokens": 16},
        headers={"Authorization": f"Bearer {keys.vista}"},
    )
    assert reply.status_code == 200 and "Paris" in reply.json()["choices"][0]["message"]["content"]
    assert client.get("/api/v1/health").status_code == 200

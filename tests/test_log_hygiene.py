"""The logs never hold message content, keys or tokens (README: "never keys, tokens or message content").

A marker string goes out as content by every route that takes content, in answers and in errors, and as a stop
sequence, a tool argument and stored session history; then every log line the servers wrote is searched for it
and for the keys and tokens. (conftest checks every server log of the whole run for the same at the end.)
"""

from __future__ import annotations

import uuid

import httpx

from tests.conftest import CONTENT_MARKER, EMBEDDER, TEST_SECRETS
from tests.harness import wait_until

SAY = f"Please repeat {CONTENT_MARKER} back to me."
ASK = [{"role": "user", "content": SAY}]
CALL = {"id": "c1", "type": "function", "function": {"name": "note", "arguments": f'{{"text": "{CONTENT_MARKER}"}}'}}
TOOL = {"type": "function", "function": {"name": "note", "parameters": {"type": "object"}}}


def requests(model: str) -> list[tuple[str, dict | bytes]]:
    """(path, body) pairs that carry the marker: answered, streamed, refused by the gateway or the worker."""
    chat = {"model": model, "max_tokens": 2, "temperature": 0}
    return [
        ("/v1/chat/completions", chat | {"messages": ASK}),
        ("/v1/chat/completions", chat | {"messages": ASK, "stream": True, "stop": [CONTENT_MARKER]}),
        (
            "/v1/chat/completions",
            chat | {"messages": [*ASK, {"role": "assistant", "tool_calls": [CALL]}], "tools": [TOOL]},
        ),
        ("/v1/chat/completions", chat | {"messages": [{"role": "user", "content": SAY * 400}]}),  # over the context
        ("/v1/chat/completions", chat | {"messages": [{"role": "wizard", "content": SAY}]}),  # invalid
        ("/v1/chat/completions", f'{{"model": "{model}", "messages": [{{"content": "{SAY}"'.encode()),  # not JSON
        ("/v1/completions", {"model": model, "prompt": SAY, "max_tokens": 2, "echo": True}),
        ("/v1/messages", {"model": model, "max_tokens": 2, "messages": ASK, "system": SAY}),
        ("/v1/messages", {"model": model, "max_tokens": 2, "messages": ASK, "stream": True}),
        ("/v1/messages/count_tokens", {"model": model, "messages": ASK}),
        ("/api/v1/sessions", {"metadata": {"note": CONTENT_MARKER}, "messages": ASK}),
    ]


def send_all(url: str, model: str, headers: dict) -> list[str]:
    traces = []
    for path, body in requests(model):
        trace = f"hygiene-{uuid.uuid4().hex[:12]}"
        sent = {"content": body} if isinstance(body, bytes) else {"json": body}
        reply = httpx.post(
            f"{url}{path}",
            headers=headers | {"X-Request-ID": trace, "Content-Type": "application/json"},
            timeout=120,
            **sent,
        )
        assert reply.status_code < 500, (path, reply.text)
        traces.append(trace)
    return traces


def assert_clean(server, traces: list[str], secrets: list[str]) -> None:
    # Every request's access line is written once its answer is complete: wait for the last one.
    assert wait_until(lambda: f'"request_id": "{traces[-1]}"' in server.log_text(), timeout=60)
    log = server.log_text()
    assert all(trace in log for trace in traces)  # the requests were logged...
    assert CONTENT_MARKER not in log  # ...without their content
    assert [s[:8] for s in secrets if s in log] == []


def test_the_keyless_servers_logs_hold_no_content(server):
    embeddings = httpx.post(f"{server.url}/v1/embeddings", json={"model": EMBEDDER, "input": [SAY]}, timeout=120)
    rerank = httpx.post(f"{server.url}/v1/rerank", json={"query": SAY, "documents": [SAY, "x"]}, timeout=120)
    assert embeddings.status_code == rerank.status_code == 200
    assert_clean(server, send_all(server.url, "smollm2", {}), [])


def test_the_secured_servers_logs_hold_no_content_keys_or_tokens(secure_server, keys):
    token = httpx.post(f"{secure_server.url}/api/v1/auth/token", headers={"x-api-key": keys.vista}).json()
    TEST_SECRETS.append(token["access_token"])
    traces = send_all(secure_server.url, "smollm2", {"Authorization": f"Bearer {token['access_token']}"})
    by_key = httpx.post(
        f"{secure_server.url}/v1/chat/completions",
        json={"messages": ASK, "max_tokens": 2},
        headers={"x-api-key": keys.vista, "X-Request-ID": "hygiene-by-key"},
        timeout=120,
    )
    assert by_key.status_code == 200
    assert_clean(secure_server, [*traces, "hygiene-by-key"], TEST_SECRETS)

"""Development mode (no keys) cannot be driven from a web page: loopback Host headers and JSON POSTs only, through
the real keyless server; and a service whose key_env is unset stops the gateway instead of falling back to it."""

from __future__ import annotations

import httpx
import pytest

from tests.test_security import gateway_alone

UNLOAD = "/api/v1/models/smollm2/unload"


def loaded_models(url: str) -> set[str]:
    return set(httpx.get(f"{url}/api/v1/models/memory/usage", timeout=30).json()["models_loaded"])


def test_a_cross_site_unload_is_refused_and_the_model_stays_loaded(server, client):
    client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=1)
    assert "smollm2" in loaded_models(server.url)
    # The finding: a rebound page's Host and a form's content type (each refused on its own, too).
    for headers, status, code in (
        ({"Host": "evil.example", "Content-Type": "text/plain"}, 403, "invalid_host"),
        ({"Host": "evil.example:9123", "Content-Type": "application/json"}, 403, "invalid_host"),
        ({"Host": "127.0.0.1.evil.example", "Content-Type": "application/json"}, 403, "invalid_host"),
        ({"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
        ({"Content-Type": "multipart/form-data; boundary=x"}, 415, "unsupported_media_type"),
        ({}, 415, "unsupported_media_type"),  # a no-cors fetch without a body sends no Content-Type
    ):
        reply = httpx.post(f"{server.url}{UNLOAD}", content=b"{}", headers=headers, timeout=30)
        assert reply.status_code == status, (headers, reply.text)
        assert reply.json()["error"]["code"] == code
    assert "smollm2" in loaded_models(server.url)


@pytest.mark.parametrize("host", ["localhost", "localhost:8080", "127.0.0.1", "[::1]", "[::1]:9123", "LOCALHOST"])
def test_loopback_host_names_are_served(server, host):
    reply = httpx.get(f"{server.url}/api/v1/models/memory/usage", headers={"Host": host}, timeout=30)
    assert reply.status_code == 200, reply.text


def test_refusals_take_the_dialects_error_shape(server):
    body = b'{"model": "smollm2", "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]}'
    rebound = httpx.post(f"{server.url}/v1/messages", content=body, headers={"Host": "evil.example"}, timeout=30)
    assert rebound.status_code == 403
    assert rebound.json()["type"] == "error" and rebound.json()["error"]["type"] == "permission_error"
    form = httpx.post(f"{server.url}/v1/messages", content=body, headers={"Content-Type": "text/plain"}, timeout=30)
    assert form.status_code == 415
    assert form.json()["type"] == "error" and "application/json" in form.json()["error"]["message"]
    chat = httpx.post(f"{server.url}/v1/chat/completions", content=body, headers={"Content-Type": "text/plain"})
    assert chat.status_code == 415 and chat.json()["error"]["type"] == "invalid_request_error"


def test_json_with_a_charset_and_multipart_uploads_pass(server):
    reply = httpx.post(
        f"{server.url}/v1/chat/completions",
        content=b'{"model": "smollm2", "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]}',
        headers={"Content-Type": "application/json; charset=utf-8"},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    # An upload route reads its multipart body (and finds no file in it): past the guard.
    upload = httpx.post(f"{server.url}/v1/audio/transcriptions", files={"notes": ("a.txt", b"")}, timeout=30)
    assert upload.status_code == 400 and upload.json()["error"]["param"] == "file"


@pytest.mark.parametrize("value", [None, "", "  "])
def test_a_service_whose_key_env_is_unset_stops_the_gateway(secure_config, value):
    proc = gateway_alone(secure_config, **({} if value is None else {"OPS_KEYS": value}))
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, out
    assert "'ops'" in out and "OPS_KEYS" in out and "unset or empty" in out
    assert "development mode" not in out

"""Gateway settings from the environment, through a real gateway process in front of the session server's
supervisor: GATEWAY_IMAGE_URLS fetches an image from a web server this test runs, LOG_FORMAT=text writes plain
lines, ACTIVITY_LOG_SIZE bounds the activity log."""

from __future__ import annotations

import http.server
import json
import threading

import httpx
import pytest

from tests.conftest import VLM
from tests.harness import wait_until
from tests.test_vision_api import IMAGE_TOKENS, ask, png

CHAT = "/v1/chat/completions"
JSON = {"Content-Type": "application/json"}


class _Pictures(http.server.BaseHTTPRequestHandler):
    served: list[str] = []

    def do_GET(self):
        if self.path != "/cat.png":
            self.send_error(404)
            return
        _Pictures.served.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        self.wfile.write(png())

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def picture_host():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Pictures)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture(scope="module")
def configured(server):
    return server.spawn_gateway(
        GATEWAY_IMAGE_URLS="1", GATEWAY_IMAGE_URL_NETWORKS="127.0.0.1/32", LOG_FORMAT="text", ACTIVITY_LOG_SIZE="2"
    ).wait_ready()


def test_image_urls_are_fetched_by_a_gateway_that_allows_them(server, configured, picture_host):
    url = f"{picture_host}/cat.png"
    body = {"model": VLM, "temperature": 0, "max_tokens": 2}
    plain = httpx.post(f"{configured.url}{CHAT}", json=body | {"messages": ask()}, timeout=120)
    fetched = httpx.post(f"{configured.url}{CHAT}", json=body | {"messages": ask(url)}, timeout=120)
    assert fetched.status_code == 200, fetched.text
    assert _Pictures.served == ["/cat.png"]  # fetched once, by the gateway
    # The fetched picture went to the model as its image tokens.
    assert fetched.json()["usage"]["prompt_tokens"] == plain.json()["usage"]["prompt_tokens"] + IMAGE_TOKENS
    refused = httpx.post(f"{server.url}{CHAT}", json=body | {"messages": ask(url)}, timeout=120)
    assert refused.status_code == 400 and "not enabled" in refused.json()["error"]["message"]
    assert _Pictures.served == ["/cat.png"]  # the session's gateway (no GATEWAY_IMAGE_URLS) fetched nothing


def test_log_format_text_writes_plain_lines_with_the_request_id(server, configured):
    reply = httpx.post(f"{configured.url}{CHAT}", content=b"{", headers=JSON | {"X-Request-ID": "text-log-check"})
    assert reply.status_code == 400

    def lines() -> list[str]:
        return [line for line in server.log_text().splitlines() if "text-log-check" in line]

    assert wait_until(lambda: any("status=400" in line for line in lines()), timeout=30)
    [access] = [line for line in lines() if "status=400" in line]
    assert not access.startswith("{")
    with pytest.raises(json.JSONDecodeError):
        json.loads(access)
    assert " gateway INFO POST /v1/chat/completions 400 " in access
    assert access.endswith("[x-request-id text-log-check]")


def test_activity_log_size_bounds_the_log(configured):
    for _ in range(3):  # each a POST the activity log keeps
        assert httpx.post(f"{configured.url}{CHAT}", content=b"{", headers=JSON).status_code == 400
    log = httpx.get(f"{configured.url}/api/activity-logs").json()
    assert log["capacity"] == 2
    assert len(log["data"]) == 2 and all(entry["status"] == 400 for entry in log["data"])

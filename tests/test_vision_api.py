"""Vision through the real gateway, supervisor and an mlx-vlm worker: OpenAI image_url parts on chat completions,
served by a tiny randomly initialised Qwen2-VL model (tests/tiny_vlm.py), and the errors around images."""

from __future__ import annotations

import asyncio
import base64
import http.server
import io
import threading
from dataclasses import replace

import httpx
import openai
import pytest
from PIL import Image

from gateway.config import GatewaySettings
from gateway.errors import APIError
from gateway.images import image_bytes
from tests.conftest import VLM

IMAGE_TOKENS = 4 + 2  # a 64x48 image resized to 56x56: 4 merged patches, between <|vision_start|> and <|vision_end|>


def png(size=(64, 48), colour=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def bmp() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="BMP")
    return out.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def ask(*images: str, text: str = "What is in this picture?") -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": url}} for url in images]
    return [{"role": "user", "content": [{"type": "text", "text": text}, *parts]}]


def test_an_image_is_decoded_preprocessed_and_answered(client):
    plain = client.chat.completions.create(model=VLM, messages=ask(), temperature=0, max_tokens=8)
    one = client.chat.completions.create(model=VLM, messages=ask(data_url(png())), temperature=0, max_tokens=8)
    assert one.model == VLM and one.choices[0].finish_reason == "length"
    assert one.usage.completion_tokens == 8 and one.choices[0].message.content  # noise, but generated tokens
    # The processor resized the image to its 56x56 grid: exactly its image tokens joined the prompt.
    assert one.usage.prompt_tokens == plain.usage.prompt_tokens + IMAGE_TOKENS
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 48), (0, 90, 200)).save(jpeg, format="JPEG")  # the same size: the same grid
    two = client.chat.completions.create(
        model=VLM, messages=ask(data_url(png()), data_url(jpeg.getvalue(), "image/jpeg")), temperature=0, max_tokens=4
    )
    assert two.usage.prompt_tokens == plain.usage.prompt_tokens + 2 * IMAGE_TOKENS
    again = client.chat.completions.create(model=VLM, messages=ask(data_url(png())), temperature=0, max_tokens=8)
    assert again.choices[0].message.content == one.choices[0].message.content  # greedy: the same image, the same text


def test_streaming_with_an_image(client):
    stream = client.chat.completions.create(
        model=VLM,
        messages=ask(data_url(png())),
        temperature=0,
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage.completion_tokens == 6
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]


def test_an_image_sent_to_a_text_model_is_a_clear_400(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="smollm2", messages=ask(data_url(png())), max_tokens=4)
    assert "Image inputs are not supported by this model" in err.value.message


def post_chat(server, messages) -> httpx.Response:
    body = {"model": VLM, "messages": messages, "max_tokens": 4}
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)


@pytest.mark.parametrize(
    ("url", "status", "words"),
    [
        ("data:image/png;base64,not*base64!", 400, "not valid base64"),
        ("data:image/png;base64,aGVsbG8é", 400, "not valid base64"),  # a non-ASCII character
        ("data:image/png;base64,aGVsbG8", 400, "not valid base64"),  # padding missing
        ("data:image/png;base64,", 400, "empty"),
        (data_url(b"plain text, not an image"), 400, "not in a format"),
        (data_url(bmp(), "image/bmp"), 400, "not in a format"),  # Pillow reads BMP; vision processors need not
        (data_url(png(), "image/jpeg"), 400, "declared image/jpeg but its bytes are image/png"),
        ("data:text/plain;base64,aGVsbG8=", 400, "data:image/<format>;base64"),
        ("https://example.com/cat.png", 400, "not enabled"),
        ("ftp://example.com/cat.png", 400, "data URL or an http(s) URL"),
        (data_url(png(size=(8000, 7000))), 413, "8000x7000 pixels"),  # 56 MP in a few kB of PNG
        ("data:image/png;base64," + "A" * (28 * 2**20), 413, "too large"),  # 21 MB once decoded
    ],
)
def test_bad_images_are_refused_before_any_model_work(server, url, status, words):
    reply = post_chat(server, ask(url))
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert words in error["message"] and error["param"] == "messages[0].content[1].image_url"


def test_more_images_than_a_request_may_hold_is_a_400_before_any_is_decoded(server):
    reply = post_chat(server, ask(*[data_url(png())] * 16, "data:image/png;base64,not*base64!"))
    error = reply.json()["error"]
    assert reply.status_code == 400 and "at most 16 images" in error["message"], reply.text
    assert error["param"] == "messages[0].content[17].image_url"


def test_an_image_part_without_a_url_is_a_400(server):
    reply = post_chat(server, [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])
    assert reply.status_code == 400 and "image_url.url" in reply.json()["error"]["message"]


RELEASE_SLOW = threading.Event()  # /slow.png answers nothing until the test sets it


class _Images(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/slow.png":
            RELEASE_SLOW.wait(timeout=120)
        port = self.server.server_address[1]
        hops = {"/hop": "/cat.png", "/loop": "/loop", "/elsewhere": f"http://127.0.0.2:{port}/cat.png"}
        if self.path in hops:  # redirects: to this host, round in a circle, to a loopback address not allowed
            self.send_response(302)
            self.send_header("Location", hops[self.path])
            self.end_headers()
            return
        body = {"/cat.png": png(), "/big.png": png(size=(2000, 2000)) + b"\0" * 50_000, "/slow.png": png()}
        if self.path not in body:
            self.send_error(404)
            return
        try:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(body[self.path])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up first, as the time limit test means it to

    def log_message(self, *args):
        pass


@pytest.fixture
def image_host():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    RELEASE_SLOW.clear()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    RELEASE_SLOW.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_image_urls_are_fetched_within_size_and_time_limits_when_enabled(image_host):
    # The test's host is loopback: a network the operator allows, as GATEWAY_IMAGE_URL_NETWORKS does.
    settings = GatewaySettings(
        image_urls=True, max_image_bytes=40_000, image_fetch_timeout=60.0, image_url_networks=("127.0.0.1/32",)
    )

    def fetch(path: str, settings=settings) -> bytes:
        return asyncio.run(image_bytes({"url": image_host + path}, settings, "p"))

    def refusal(path: str, settings=settings) -> APIError:
        with pytest.raises(APIError) as caught:
            fetch(path, settings)
        assert caught.value.param == "p"
        return caught.value

    assert fetch("/cat.png") == png()
    assert fetch("/hop") == png()  # a redirect within the allowed network is followed
    assert refusal("/big.png").status == 413
    slow = refusal("/slow.png", replace(settings, image_fetch_timeout=1.0))  # only the deadline can end it
    assert slow.status == 400 and "took longer than 1s" in slow.message
    missing = refusal("/none.png")
    assert missing.message == "Fetching the image gave HTTP 404"  # not the upstream's error page
    assert "private, loopback or link-local" in refusal("/elsewhere").message  # 127.0.0.2 is not allowed
    assert "more than 3 times" in refusal("/loop").message
    # By default no loopback, private or link-local host is fetched from, whatever the name.
    default = GatewaySettings(image_urls=True)
    assert "private, loopback or link-local" in refusal("/cat.png", default).message
    for url in ("http://localhost/cat.png", "http://[::1]/cat.png", "http://169.254.169.254/latest/meta-data"):
        with pytest.raises(APIError, match="private, loopback or link-local"):
            asyncio.run(image_bytes({"url": url}, default, "p"))
    # A host that is there no more: the client is told so, without the network's own error text.
    closed = image_host.rsplit(":", 1)[0] + ":1"
    with pytest.raises(APIError) as gone:
        asyncio.run(image_bytes({"url": f"{closed}/cat.png"}, settings, "p"))
    assert gone.value.message == "The image could not be fetched"


def test_images_are_refused_in_sessions_and_the_session_is_left_untouched(server):
    session_id = httpx.post(f"{server.url}/api/v1/sessions", json={}, timeout=30).json()["id"]
    body = {"model": VLM, "messages": ask(data_url(png())), "max_tokens": 2, "session_id": session_id}
    reply = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["code"] == "invalid_request" and "A session stores text only" in error["message"]
    assert httpx.get(f"{server.url}/api/v1/sessions/{session_id}/messages", timeout=30).json()["data"] == []
    text_only = {"model": VLM, "messages": ask(), "max_tokens": 2, "session_id": session_id}
    assert httpx.post(f"{server.url}/v1/chat/completions", json=text_only, timeout=60).status_code == 200
    assert len(httpx.get(f"{server.url}/api/v1/sessions/{session_id}/messages", timeout=30).json()["data"]) == 2

"""The Anthropic Messages API through the real server, with the official anthropic SDK as the client."""

from __future__ import annotations

import base64
import io
import json

import anthropic
import httpx
import pytest
from PIL import Image

PARIS = [{"role": "user", "content": "What is the capital of France?"}]
HAIKU = "claude-haiku-4-5-20251001"  # routed by the test config's claude_tiers to `tiny`, an alias of smollm2
# Greedy decoding. This SDK version no longer has a temperature argument; the API (and Claude Code) still
# sends the field, so it goes in the body.
GREEDY = {"extra_body": {"temperature": 0}}


@pytest.fixture(scope="module", params=["", "/anthropic"])
def claude(request, server):
    """Both base URLs the server offers: /v1/messages and /anthropic/v1/messages."""
    return anthropic.Anthropic(base_url=server.url + request.param, api_key="not-needed", max_retries=0, timeout=120)


def test_message_answers_paris_and_names_the_model_that_served_it(claude):
    reply = claude.messages.create(model="smollm2", max_tokens=16, **GREEDY, messages=PARIS)
    assert reply.type == "message" and reply.role == "assistant" and reply.id.startswith("msg_")
    [block] = reply.content
    assert block.type == "text" and "Paris" in block.text
    assert reply.stop_reason in {"end_turn", "max_tokens"} and reply.stop_sequence is None
    assert reply.model == "smollm2"
    assert reply.usage.input_tokens + reply.usage.cache_read_input_tokens > 10
    assert 0 < reply.usage.output_tokens <= 16


def test_claude_tier_is_routed_to_the_local_model(claude):
    reply = claude.messages.create(model=HAIKU, max_tokens=16, **GREEDY, messages=PARIS)
    assert reply.model == "smollm2"  # the response names the local model, not the Claude name asked for
    assert "Paris" in reply.content[0].text


def test_stream_assembles_into_the_same_message(claude):
    whole = claude.messages.create(model="smollm2", max_tokens=16, **GREEDY, messages=PARIS)
    with claude.messages.stream(model=HAIKU, max_tokens=16, **GREEDY, messages=PARIS) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert final.content[0].text == whole.content[0].text
    assert final.stop_reason == whole.stop_reason and final.model == "smollm2"
    assert final.usage.output_tokens == whole.usage.output_tokens

    def prompt(usage):  # Anthropic counts the tokens read from the prompt cache apart
        return usage.input_tokens + usage.cache_read_input_tokens

    assert prompt(final.usage) == prompt(whole.usage) and final.usage.cache_read_input_tokens > 0
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert [k for k in kinds if k.startswith("content_block_") and k != "content_block_delta"] == [
        "content_block_start",
        "content_block_stop",
    ]
    assert kinds.index("message_delta") == len(kinds) - 2


def test_raw_event_sequence(server):
    body = {"model": "smollm2", "max_tokens": 8, "temperature": 0, "messages": PARIS, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/messages", json=body, timeout=120) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        names = [line.removeprefix("event: ") for line in response.iter_lines() if line.startswith("event: ")]
    assert names[:4] == ["message_start", "ping", "content_block_start", "content_block_delta"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]


def test_stop_sequences(claude):
    reply = claude.messages.create(
        model="smollm2", max_tokens=16, **GREEDY, messages=PARIS, stop_sequences=["Lyon", "Paris"]
    )
    assert reply.stop_reason == "stop_sequence" and reply.stop_sequence == "Paris"
    assert "Paris" not in reply.content[0].text


def test_count_tokens_matches_the_prompt_of_a_message_and_counts_the_system_prompt(claude):
    system = "You are a geography teacher who answers in one word."
    counted = claude.messages.count_tokens(model=HAIKU, system=system, messages=PARIS)
    reply = claude.messages.create(model="smollm2", max_tokens=1, system=system, messages=PARIS)
    assert counted.input_tokens == reply.usage.input_tokens + reply.usage.cache_read_input_tokens > 10
    plain = claude.messages.count_tokens(model=HAIKU, messages=PARIS)
    assert plain.input_tokens != counted.input_tokens  # the system prompt replaced the template's default one


def test_unrouted_tier_is_the_sdks_not_found_error(claude):
    with pytest.raises(anthropic.NotFoundError) as caught:
        claude.messages.create(model="claude-opus-4-1", max_tokens=8, messages=PARIS)
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "not_found_error"
    assert "opus tier" in caught.value.body["error"]["message"]


def test_an_image_for_a_text_model_is_a_bad_request(claude):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, format="PNG")  # a real image: the gateway checks it first
    png = base64.b64encode(buffer.getvalue()).decode()
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}}
    content = [image, {"type": "text", "text": "What is this?"}]
    with pytest.raises(anthropic.BadRequestError, match="Image inputs are not supported"):
        claude.messages.create(model="smollm2", max_tokens=8, messages=[{"role": "user", "content": content}])


PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABc3UBGAAAAABJRU5ErkJggg=="  # 1x1 pixel


def _image(data: str, media_type: str = "image/png") -> list:
    source = {"type": "base64", "media_type": media_type, "data": data}
    return [{"type": "image", "source": source}, {"type": "text", "text": "hi"}]


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"max_tokens": 8, "messages": []}, "messages"),  # empty input
        ({"max_tokens": 8, "messages": [{"role": "user", "content": []}]}, "content"),
        ({"max_tokens": 8, "messages": [{"role": "user", "content": 7}]}, "content"),  # wrong type
        ({"max_tokens": 8, "messages": [{"role": "robot", "content": "hi"}]}, "role"),
        ({"messages": PARIS}, "max_tokens"),  # required by Anthropic's API
        ({"max_tokens": 8, "temperature": 1.5, "messages": PARIS}, "temperature"),
        ({"max_tokens": 8, "messages": [{"role": "user", "content": _image("@@@not base64@@@")}]}, "base64"),
        ({"max_tokens": 8, "messages": [{"role": "user", "content": _image("iVBORw0KGgo\u00e9AAAA")}]}, "base64"),
        ({"max_tokens": 8, "messages": [{"role": "user", "content": _image("iVBORw0KGgo")}]}, "base64"),  # padding
        ({"max_tokens": 8, "messages": [{"role": "user", "content": _image("")}]}, "empty"),
        ({"max_tokens": 8, "messages": [{"role": "user", "content": _image(PNG, "image/gif")}]}, "declared image/gif"),
        ({"max_tokens": 8, "messages": [{"role": "user", "content": _image(PNG) * 17}]}, "at most 16 images"),
        ({"max_tokens": 8, "messages": PARIS, "top_k": 2**64}, "top_k"),
        ({"max_tokens": 2**64, "messages": PARIS}, "max_tokens"),
        ({"max_tokens": 8, "messages": PARIS, "stop_sequences": ["x" * 513]}, "stop_sequences[0]"),
        ({"max_tokens": 8, "messages": [{"role": "user", "content": _image("AAAA", "image/tiff")}]}, "media_type"),
        ({"max_tokens": 8, "messages": [{"role": "user", "content": _image("A" * 8_000_000)}]}, "larger than"),
        ({"max_tokens": 8, "messages": PARIS, "tool_choice": {"type": "any"}}, "needs tools"),
    ],
)
def test_bad_requests_are_anthropic_shaped_400s(server, body, where):
    response = httpx.post(f"{server.url}/v1/messages", json={"model": "smollm2", **body}, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert where in error["error"]["message"]


def test_unknown_route_and_malformed_json_are_anthropic_shaped(server):
    response = httpx.post(f"{server.url}/anthropic/v1/nothing", json={}, timeout=30)
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found_error"
    response = httpx.post(
        f"{server.url}/v1/messages/count_tokens", content=b"{", headers={"Content-Type": "application/json"}, timeout=30
    )
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"


def test_a_stream_refused_at_admission_is_the_sdks_error_with_the_reason(claude):
    too_long = [{"role": "user", "content": "word " * 3000}]  # the test model's context is 2048 tokens
    # Loaded first: a stream whose model is still loading starts at once, and gets an error event instead.
    claude.messages.count_tokens(model=HAIKU, messages=PARIS)
    with (
        pytest.raises(anthropic.BadRequestError, match="maximum context length") as caught,
        claude.messages.stream(model=HAIKU, max_tokens=8, messages=too_long) as stream,
    ):
        stream.get_final_message()
    assert caught.value.body["error"]["type"] == "invalid_request_error"


def test_an_error_after_the_stream_started_is_an_anthropic_error_event(tight_server):
    """A stream whose model is still loading starts at once (keepalives every 0.5 s on this server); a refusal
    found after that arrives as Anthropic's `error` event, which the SDK raises."""
    for model in ("x", "y"):
        assert tight_server.ctl("unload", model).returncode == 0
    too_long = [{"role": "user", "content": "word " * 3000}]
    body = {"model": "x", "max_tokens": 8, "messages": too_long, "stream": True}
    with httpx.stream("POST", f"{tight_server.url}/anthropic/v1/messages", json=body, timeout=120) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    assert lines[0] == ": keepalive"
    assert lines[-2:][0] == "event: error"
    error = json.loads(lines[-1].removeprefix("data: "))
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert "maximum context length" in error["error"]["message"]
    # The SDK turns the event into its own exception.
    claude = anthropic.Anthropic(base_url=tight_server.url, api_key="unused", max_retries=0, timeout=120)
    assert tight_server.ctl("unload", "x").returncode == 0
    with (
        pytest.raises(anthropic.APIStatusError, match="maximum context length"),
        claude.messages.stream(model="x", max_tokens=8, messages=too_long) as stream,
    ):
        stream.get_final_message()

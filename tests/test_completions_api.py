"""POST /v1/completions through the real server (openai SDK): text, streaming with usage, bad input."""

from __future__ import annotations

import httpx
import openai
import pytest

PROMPT = "The capital of France is"


def test_completion_continues_the_prompt(client):
    reply = client.completions.create(model="smollm2", prompt=PROMPT, temperature=0, max_tokens=8)
    [choice] = reply.choices
    assert "Paris" in choice.text
    assert choice.finish_reason in {"stop", "length"}
    assert reply.object == "text_completion" and reply.model == "smollm2"
    assert reply.usage.prompt_tokens == 5 and 0 < reply.usage.completion_tokens <= 8


def test_streamed_completion_matches_the_whole_one_and_ends_with_usage(client):
    whole = client.completions.create(model="smollm2", prompt=PROMPT, temperature=0, max_tokens=8)
    chunks = list(
        client.completions.create(
            model="smollm2",
            prompt=[PROMPT],
            temperature=0,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_echo_and_stop(client):
    reply = client.completions.create(
        model="smollm2", prompt=PROMPT, temperature=0, max_tokens=8, echo=True, stop=["Paris"]
    )
    assert reply.choices[0].text.startswith(PROMPT) and "Paris" not in reply.choices[0].text
    assert reply.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "smollm2", "prompt": ""}, "prompt"),  # empty input
        ({"model": "smollm2", "prompt": 42}, "prompt"),  # wrong type
        ({"model": "smollm2", "prompt": ["a", "b"]}, "prompt"),  # one prompt per request
        ({"model": "smollm2"}, "prompt"),  # missing
        ({"model": "smollm2", "prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"model": "smollm2", "prompt": "x", "temperature": "hot"}, "temperature"),
    ],
)
def test_bad_completion_requests_are_400s_naming_the_field(server, body, param):
    response = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


def test_completion_for_an_unknown_model_is_a_404(client):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="no-such-model", prompt=PROMPT, max_tokens=4)
